"""Shared inputs of the flow tests: a small synthetic scene (session-wide); the tiny checkpoint is
tests/fixtures/checkpoint.py."""

from __future__ import annotations

import pytest

SCENE = (96, 128)  # one block, a handful of 64-px tiles: the flows are under test, not the model
DETECT_OVERRIDES = {"tiling.tile": 64, "tiling.overlap": 16, "tiling.block": 512}


@pytest.fixture(scope="session")
def synth_scene(tmp_path_factory: pytest.TempPathFactory):
    """optical.tif, sar.tif, label.tif of a small georeferenced synthetic pair."""
    from pipeline.synth import synth_pair

    return synth_pair(
        tmp_path_factory.mktemp("scene"), size=SCENE, seed=3, change_fraction=0.1, sar_bands=1
    )
