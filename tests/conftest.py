"""Shared fixtures: real servers are started by the fixture modules in tests/fixtures/."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "real"

pytest_plugins = [
    "tests.fixtures.s3",
    "tests.fixtures.prefect",
    "tests.fixtures.checkpoint",
    "tests.fixtures.http_range",
]


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The read-only real optical/SAR pairs beside the checkout (never copied into the repo)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA
