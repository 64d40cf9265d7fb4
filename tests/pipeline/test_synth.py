"""pipeline.synth and `m2cd synth`: georeferenced, deterministic, learnable synthetic pairs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio

from flows.cli import main
from pipeline.config import DetectConfig
from pipeline.errors import OutputExistsError
from pipeline.geometry import PixelBox
from pipeline.io.normalize import sar_to_db, valid_mask
from pipeline.io.scene import open_scene
from pipeline.synth import SynthSpec, _render, _thresholds, synth_pair

SPEC = SynthSpec(size=(384, 520), seed=11, change_fraction=0.06)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return synth_pair(tmp_path_factory.mktemp("synth"), SPEC)


def _read(path):
    with rasterio.open(path) as src:
        return src.read(), src.profile


def test_files_share_one_utm_grid(pair):
    (opt, p_opt), (sar, p_sar), (lab, p_lab) = (
        _read(p) for p in (pair.optical, pair.sar, pair.label)
    )
    for p in (p_opt, p_sar, p_lab):
        assert p["crs"].to_epsg() == 32633 and (p["height"], p["width"]) == SPEC.size
        assert p["transform"] == p_opt["transform"] and p["transform"].a == 10.0
        assert p["tiled"]
    assert opt.dtype == np.uint16 and opt.shape[0] == 4 and p_opt["nodata"] == 0
    assert sar.dtype == np.float32 and sar.shape[0] == 2
    assert lab.dtype == np.uint8 and set(np.unique(lab)) <= {0, 1}
    assert 1 < opt[:, 0].mean() < 10000  # reflectance ×10000


def test_change_fraction_and_learnable_flood(pair):
    opt, _ = _read(pair.optical)
    sar, _ = _read(pair.sar)
    lab = _read(pair.label)[0][0].astype(bool)
    assert abs(lab.mean() - SPEC.change_fraction) < 0.02
    assert pair.change_fraction == pytest.approx(lab.mean())
    vv_db = sar_to_db(sar[0], "linear", DetectConfig().sar)
    nir = opt[3].astype(float)
    water_before = nir < 400  # water: NIR reflectance ≈ 0.02
    # changed pixels: land (bright NIR) in the optical, water (dark σ⁰) in the SAR
    assert nir[lab].mean() > 1500 and not (water_before & lab).any()
    assert np.median(vv_db[lab]) < -20 < np.median(vv_db[~lab & ~water_before])
    # speckle: Gamma with `looks` looks has coefficient of variation 1/sqrt(looks) (times texture)
    flat = sar[0][water_before]
    assert 0.4 < flat.std() / flat.mean() < 0.7


def test_same_seed_same_bytes_other_seed_differs(pair, tmp_path):
    again = synth_pair(tmp_path / "a", SPEC)
    for name in ("optical", "sar", "label"):
        assert getattr(again, name).read_bytes() == getattr(pair, name).read_bytes()
    other = synth_pair(tmp_path / "b", SPEC, seed=12)
    assert other.change_fraction != pair.change_fraction
    assert other.optical.read_bytes() != pair.optical.read_bytes()


def test_any_window_renders_alone():
    t = _thresholds(SPEC, 96)
    big = _render(SPEC, 0, 384, 0, 520, t, 96)
    part = _render(SPEC, 100, 150, 333, 401, t, 96)
    np.testing.assert_array_equal(part[0], big[0][:, 100:150, 333:401])  # optical
    np.testing.assert_array_equal(part[2], big[2][100:150, 333:401])  # label


def test_nodata_strips_and_epsg4326(tmp_path):
    res = synth_pair(
        tmp_path, size=(128, 200), seed=3, crs="EPSG:4326", nodata_strip=0.1, sar_bands=1
    )
    cfg = DetectConfig()
    opt, sar = open_scene(res.optical, "optical", cfg), open_scene(res.sar, "sar", cfg)
    assert opt.crs.to_epsg() == 4326 and opt.transform.a == pytest.approx(9e-5)
    assert sar.bands == [1] and sar.units == "linear"
    win = PixelBox.full(opt.shape)
    o, s = opt.read_window(win), sar.read_window(win)
    lab = _read(res.label)[0][0]
    assert (o[:, :, 180:] == 0).all() and (o[:, :, :180] > 0).all()  # optical nodata east
    assert (s[:, :, :20] == 0).all() and (s[:, :, 20:] > 0).all()  # SAR zero fill west
    mask = valid_mask(o, s, opt.nodata, sar.nodata)
    assert not mask[:, :20].any() and not mask[:, 180:].any() and mask[:, 20:180].all()
    assert not lab[:, :20].any() and not lab[:, 180:].any()
    assert json.loads((tmp_path / "synth.json").read_text())["spec"]["crs"] == "EPSG:4326"


def test_existing_files_need_overwrite(pair):
    with pytest.raises(OutputExistsError, match="optical.tif: exists"):
        synth_pair(pair.optical.parent, SPEC)


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["synth", "--out", str(out), "--size", "64", "96", "--seed", "4", "--sar-bands", "1"]
    assert main(argv) == 0
    assert "64×96 px" in capsys.readouterr().out
    with rasterio.open(out / "sar.tif") as src:
        assert src.count == 1 and src.shape == (64, 96)
    assert main(argv) == 2  # exists: refused without --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0
    assert main(["synth", "--out", str(out), "--change-fraction", "0.9"]) == 2
    assert "change_fraction" in capsys.readouterr().err
