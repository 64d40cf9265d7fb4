"""glibc malloc settings: applied once per process, never over the user's own settings."""

from __future__ import annotations

import subprocess
import sys

import pytest

_PROBE = """
import json
from pipeline.engine.allocator import tune_malloc
applied = tune_malloc()
print(json.dumps({"applied": applied, "again": tune_malloc()}))
"""


def _probe(env: dict[str, str]) -> dict:
    import json
    import os

    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "M2CD_TUNE"))}
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], env={**clean, **env}, capture_output=True, text=True,
        timeout=60, check=True,
    )  # fmt: skip
    return json.loads(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_settings_apply_once_and_yield_to_the_user():
    assert _probe({}) == {"applied": True, "again": True}
    assert _probe({"M2CD_TUNE_MALLOC": "0"})["applied"] is False
    assert _probe({"MALLOC_MMAP_THRESHOLD_": "131072"})["applied"] is False
