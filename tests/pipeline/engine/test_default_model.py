"""The shipped model is what a user gets when no model is named, and it refuses inputs it was not
trained for instead of mapping nonsense."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

import m2cd
from m2cd.checkpoint import verify_checkpoint
from m2cd.pretrained import DEFAULT_MODEL, probe_output, shipped_checkpoint
from pipeline.engine.request import DetectRequest
from pipeline.errors import InputError

REPO = Path(__file__).resolve().parents[3]
SHIPPED = shipped_checkpoint()
META = json.loads((SHIPPED / "checkpoint.json").read_text())


def test_the_shipped_model_loads_by_digest_and_gives_the_recorded_output():
    assert verify_checkpoint(SHIPPED)["digest"] == META["digest"]
    assert (SHIPPED / "weights.safetensors").stat().st_size <= 30 * 2**20
    recorded = np.array(META["provenance"]["probe"]["probability"])
    assert np.allclose(probe_output(m2cd.load_checkpoint(SHIPPED)), recorded, atol=2e-3)


def test_no_model_named_means_the_shipped_model_and_its_fitted_threshold(tmp_path):
    req = DetectRequest(optical="a.tif", sar="b.tif", out=str(tmp_path / "o"))
    assert Path(req.checkpoint or "") == SHIPPED and req.model is None
    assert req.config.products.threshold == pytest.approx(META["provenance"]["threshold"])
    named = DetectRequest(optical="a.tif", sar="b.tif", out="o", model="tiny")
    assert named.checkpoint is None and named.config.products.threshold == 0.5
    own = DetectRequest(
        optical="a.tif", sar="b.tif", out="o", config={"products": {"threshold": 0.7}}
    )
    assert own.config.products.threshold == 0.7


def test_detect_scene_uses_the_shipped_model_while_nothing_is_promoted(tmp_path):
    from flows.detect_scene import resolve_model

    assert Path(resolve_model("promoted", str(tmp_path / "empty-registry"))) == SHIPPED
    assert Path(resolve_model(DEFAULT_MODEL)) == SHIPPED == Path(resolve_model("default"))


def test_a_two_band_sar_scene_through_the_one_band_model_is_refused(tmp_path):
    from pipeline.engine.plan import plan_run
    from pipeline.synth import synth_pair

    scene = synth_pair(tmp_path / "s", size=(64, 64), seed=1, sar_bands=2)
    # bands named VV, VH: the model's VV is picked by name (pipeline.io.band_names), no refusal
    named = DetectRequest(optical=str(scene.optical), sar=str(scene.sar), out=str(tmp_path / "n"))
    assert plan_run(named).config.sar.bands == [1]
    with rasterio.open(scene.sar, "r+") as dst:  # unnamed bands: nothing says which is VV
        for band in (1, 2):
            dst.set_band_description(band, "")
    req = DetectRequest(optical=str(scene.optical), sar=str(scene.sar), out=str(tmp_path / "o"))
    with pytest.raises(
        InputError, match=r"2 sar band\(s\) selected but the model was trained on 1"
    ):
        plan_run(req)
    assert not (tmp_path / "o").exists()  # refused at plan time: nothing staged
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", "detect", str(scene.optical), str(scene.sar),
         "--out", str(tmp_path / "o2")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "sar.bands=[1]" in proc.stderr and "Traceback" not in proc.stderr


def test_detect_with_no_model_flag_maps_with_the_shipped_model_and_records_sar_units(tmp_path):
    from pipeline.synth import synth_pair

    scene = synth_pair(tmp_path / "s", size=(96, 96), seed=2, sar_bands=1)
    out = tmp_path / "o"
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", "detect", str(scene.optical), str(scene.sar),
         "--out", str(out), "--set", "optical.bands=[3,2,1]", "--no-progress"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    said = proc.stdout + proc.stderr
    assert "SAR units" in said and f"threshold {META['provenance']['threshold']:g}" in said
    item = json.loads((out / "item.json").read_text())
    assert item["properties"]["m2cd:model_digest"] == META["digest"]
    assert item["properties"]["m2cd:sar_units"] in {"db", "linear"}
    run = json.loads((out / "run.json").read_text())
    assert run["plan"]["sar_units"] == item["properties"]["m2cd:sar_units"]
