"""Band choice shared by training and detection (pipeline.io.bands): 2-band SAR, native-band models,
and a clear error when a file's bands cannot feed the model."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import rasterio

from flows.cli import main
from pipeline.config import DetectConfig
from pipeline.errors import InputError
from pipeline.io.bands import resolve_bands, select_bands

# a tiny model with native bands: 4-band optical (B,G,R,NIR) and VV+VH SAR, one stem each
NATIVE = """\
backbone: {name: mit_b0, widths: [16, 32, 64, 128], depths: [1, 1, 1, 1], heads: [1, 1, 2, 4]}
moe: {enabled: false}
decoder: {channels: 32}
bands: {optical_channels: 4, sar_channels: 2, separate_stems: true}
"""


def test_default_models_keep_the_reader_defaults_and_the_run_key():
    cfg = DetectConfig()
    # 4-band optical (first 3 taken) + VV/VH (→ VV, VH, mean) or VV alone fit a 3/3 model as is
    for sar_count in (1, 2):
        assert resolve_bands(cfg, ("o.tif", 4), ("s.tif", sar_count), 3, 3) is cfg


def test_native_band_model_reads_the_bands_it_takes():
    cfg = resolve_bands(DetectConfig(), ("o.tif", 4), ("s.tif", 2), 4, 2)
    assert cfg.optical.bands == [1, 2, 3, 4] and cfg.sar.bands is None  # both SAR bands
    # a one-band SAR model reads VV out of a VV+VH file
    assert resolve_bands(DetectConfig(), ("o.tif", 3), ("s.tif", 2), 3, 1).sar.bands == [1]


def test_bands_that_cannot_feed_the_model_name_the_file_and_both_counts():
    with pytest.raises(InputError, match=r"o\.tif: optical has 3 band\(s\).*takes 4 optical"):
        resolve_bands(DetectConfig(), ("o.tif", 3), ("s.tif", 2), 4, 2)
    with pytest.raises(InputError, match=r"s\.tif: sar\.bands \[1, 2\] selects 2 .* takes 4"):
        select_bands("sar", "s.tif", 2, [1, 2], 4)


def _synth(tmp_path, name: str, sar_bands: int):
    from pipeline.synth import SynthSpec, synth_pair

    spec = SynthSpec(size=(64, 64), seed=5, sar_bands=sar_bands, change_fraction=0.15)
    return synth_pair(tmp_path / name, spec)


def _train(scene, out, model: str, capsys) -> None:
    args = ["train", "--optical", str(scene.optical), "--sar", str(scene.sar)]
    args += ["--label", str(scene.label), "--train-window", "0:64,0:64", "--model", model]
    args += ["--steps", "1", "--batch-size", "2", "--tile", "32", "--out", str(out)]
    args += ["--no-progress", "--set", "precision=fp32"]
    assert main(args) == 0, capsys.readouterr().err
    capsys.readouterr()


def _detect(scene, ckpt, out, capsys) -> int:
    args = ["detect", str(scene.optical), str(scene.sar), "--checkpoint", str(ckpt)]
    return main([*args, "--out", str(out), "--tile", "64", "--overlap", "0", "--no-progress"])


@pytest.mark.slow
def test_vv_vh_scene_trains_and_detects_with_default_and_native_band_models(tmp_path, capsys):
    # default model configs (3/3 channels; `tiny` for speed, like every shipped config): VV+VH
    # becomes (VV, VH, mean) in training and in the engine alike
    scene = _synth(tmp_path, "vvvh", sar_bands=2)
    _train(scene, tmp_path / "default", "tiny", capsys)
    assert _detect(scene, tmp_path / "default" / "best", tmp_path / "det_default", capsys) == 0
    # native bands: all 4 optical bands and both SAR bands, in training and detection
    native = tmp_path / "native.yaml"
    native.write_text(NATIVE)
    _train(scene, tmp_path / "native", str(native), capsys)
    cfg = json.loads((tmp_path / "native" / "best" / "checkpoint.json").read_text())["model"]
    assert cfg["bands"]["optical_channels"] == 4 and cfg["bands"]["sar_channels"] == 2
    assert _detect(scene, tmp_path / "native" / "best", tmp_path / "det_native", capsys) == 0
    with rasterio.open(tmp_path / "det_native" / "change_mask.tif") as src:
        assert src.shape == (64, 64)
        assert np.isin(src.read(1), [0, 1, 255]).all()
    capsys.readouterr()
    # a 3-band optical cannot feed the 4-band model: exit 2, the file and both counts named
    three = tmp_path / "rgb.tif"
    with rasterio.open(scene.optical) as src:
        profile = {**src.profile, "count": 3}
        with rasterio.open(three, "w", **profile) as dst:
            dst.write(src.read([1, 2, 3]))
    bad = dataclasses.replace(scene, optical=three)
    assert _detect(bad, tmp_path / "native" / "best", tmp_path / "det_bad", capsys) == 2
    err = capsys.readouterr().err
    assert "rgb.tif" in err and "3 band(s)" in err and "4 optical channel(s)" in err
    assert "Traceback" not in err


def test_a_recipe_whose_stages_take_different_bands_is_refused(tmp_path):
    from pipeline.errors import ConfigError
    from pipeline.training.config import TrainConfig
    from pipeline.training.trainer import recipe_channels

    native = tmp_path / "native.yaml"
    native.write_text(NATIVE)
    stages = [{"name": "a", "model": "tiny"}, {"name": "b", "model": str(native)}]
    cfg = TrainConfig.model_validate({"data": {"folders": {"root": "x"}}, "stages": stages})
    with pytest.raises(ConfigError, match=r"different \(optical, SAR\) channel counts"):
        recipe_channels(cfg)
    assert recipe_channels(cfg.model_copy(update={"stages": cfg.stages[1:]})) == (4, 2)
