"""The pair is opened once per process per run, also when the model takes other bands than the
reader's defaults (issue 10: `plan_run` used to reopen both files for the model's bands)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import rasterio
import torch
import yaml

import m2cd
import pipeline.engine.pair as pairs
from pipeline.config import load_detect_config
from pipeline.engine.block import run_block
from pipeline.engine.plan import RunPlan, plan_run
from pipeline.engine.request import DetectRequest
from pipeline.io import storage
from pipeline.synth import SynthSpec, synth_pair

# `tiny` with a one-band SAR stem: a VV+VH scene must be read as VV alone (sar.bands=[1])
VV_ONLY = """\
backbone: {name: mit_b0, widths: [16, 32, 64, 128], depths: [1, 1, 1, 1], heads: [1, 1, 2, 4]}
moe: {enabled: false}
decoder: {channels: 32}
bands: {optical_channels: 3, sar_channels: 1, separate_stems: true}
"""
SMALL = {"tiling.tile": 64, "tiling.overlap": 16, "tiling.block": 128}


def _count_opens(monkeypatch) -> Counter[str]:
    """Every `rasterio.open` of a path, counted; the real reader still does the opening."""
    opened: Counter[str] = Counter()
    real_open = rasterio.open

    def counting_open(fp, *args, **kwargs):
        opened[str(fp)] += 1
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(rasterio, "open", counting_open)
    return opened


def _vv_only_checkpoint(directory: Path) -> str:
    """A real checkpoint of the one-band-SAR model (random weights, fixed seed)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        m2cd.save_checkpoint(m2cd.build_model(yaml.safe_load(VV_ONLY)), directory / "vv_only")
    return str(directory / "vv_only")


def _plan(scene, out, **model: str) -> RunPlan:
    req = DetectRequest(
        optical=str(scene.optical),
        sar=str(scene.sar),
        out=str(out),
        config=load_detect_config("default", SMALL),
        **model,
    )
    return plan_run(req)


def test_a_model_with_other_bands_opens_each_file_of_the_pair_no_more_than_the_default(
    tmp_path, monkeypatch
):
    scene = synth_pair(tmp_path / "s", SynthSpec(size=(128, 128), seed=3, sar_bands=2))
    optical, sar = storage.gdal_path(str(scene.optical)), storage.gdal_path(str(scene.sar))
    vv_only = _vv_only_checkpoint(tmp_path)

    opened = _count_opens(monkeypatch)
    default = _plan(scene, tmp_path / "default", model="tiny")
    default_opens = (opened[optical], opened[sar])
    opened.clear()
    plan = _plan(scene, tmp_path / "vv", checkpoint=vv_only)

    assert default.config.sar.bands is None and plan.config.sar.bands == [1]
    assert opened[optical] == 1  # the header, read once
    assert (opened[optical], opened[sar]) == default_opens  # the band change reopened nothing
    # the units are those of a pair opened afresh with the model's bands (behaviour unchanged)
    fresh = pairs.open_pair(str(scene.optical), str(scene.sar), plan.config)
    assert fresh.sar.bands == [1] and fresh.sar.units == plan.sar_units


def test_blocks_in_the_planning_process_reuse_the_plans_pair(tmp_path, monkeypatch):
    scene = synth_pair(tmp_path / "s", SynthSpec(size=(128, 128), seed=3, sar_bands=2))
    plan = _plan(scene, tmp_path / "vv", checkpoint=_vv_only_checkpoint(tmp_path))
    planned = pairs.pair_for(plan)

    run_block(plan, 0)
    assert pairs.pair_for(plan) is planned  # no second open_pair in this process
    assert planned.sar.bands == [1]
