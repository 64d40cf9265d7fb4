"""pipeline.io.normalize: reflectance and σ⁰ dB scaling, the auto SAR-unit rule, the valid mask."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import rasterio

from pipeline.config import OpticalConfig, SarConfig
from pipeline.io.normalize import (
    band_valid,
    infer_sar_units,
    match_channels,
    normalize_optical,
    normalize_sar,
    optical_scale,
    sar_to_db,
    valid_mask,
)


def test_optical_uint16_reflectance_maps_to_fixed_range():
    raw = np.array([[[0, 2500, 5000, 9000]]], dtype=np.uint16)  # reflectance 0, .25, .5, .9
    out = normalize_optical(raw, OpticalConfig())
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0], [-2.0, 0.0, 2.0, 2.0])  # clipped at max_reflectance


def test_optical_uint8_full_scale_reaches_the_clip_and_float_is_reflectance():
    cfg = OpticalConfig()
    assert optical_scale(cfg, "uint8") == pytest.approx(510.0)
    out8 = normalize_optical(np.array([[[0, 255]]], dtype=np.uint8), cfg)
    np.testing.assert_allclose(out8[0, 0], [-2.0, 2.0])
    outf = normalize_optical(np.array([[[0.125]]], dtype=np.float32), cfg)
    np.testing.assert_allclose(outf, -1.0)
    custom = normalize_optical(np.array([[[100]]], dtype=np.uint16), OpticalConfig(scale=400))
    np.testing.assert_allclose(custom, 0.0)  # 100 / 400 = 0.25 reflectance


def test_sar_units_all_give_the_same_db():
    cfg = SarConfig()  # db_range (-25, 5)
    lin = np.full((1, 1, 2), 0.01, dtype=np.float32)  # -20 dB
    amp = np.full((1, 1, 2), 0.1, dtype=np.float32)  # 20·log10(0.1) = -20 dB
    db = np.full((1, 1, 2), -20.0, dtype=np.float32)
    expected = 2 * (-20 + 25) / 30 - 1
    for raw, units in ((lin, "linear"), (amp, "amplitude"), (db, "db")):
        np.testing.assert_allclose(normalize_sar(raw, cfg, units), expected, rtol=1e-5)
    clipped = normalize_sar(np.array([[[-40.0, 20.0]]], dtype=np.float32), cfg, "db")
    np.testing.assert_allclose(clipped[0, 0], [-1.0, 1.0])


def test_sar_uint8_amplitude_uses_full_scale():
    cfg = SarConfig()
    np.testing.assert_allclose(sar_to_db(np.array([255], np.uint8), "amplitude", cfg), 0.0)
    np.testing.assert_allclose(
        sar_to_db(np.array([100], np.uint16), "amplitude", SarConfig(amplitude_scale=1000)), -20.0
    )


def test_sar_needs_resolved_units():
    with pytest.raises(ValueError, match="resolved units"):
        normalize_sar(np.ones((1, 2, 2), np.float32), SarConfig(units="auto"))


def test_invalid_pixels_become_finite_zero():
    raw = np.array([[[np.nan, np.inf, 0.0, 0.05]]], dtype=np.float32)
    out = normalize_sar(raw, SarConfig(), "linear")
    assert np.isfinite(out).all()
    assert out[0, 0, 0] == 0 and out[0, 0, 1] == 0
    valid = np.array([[True, True, True, False]])
    out = normalize_optical(np.full((3, 1, 4), 3000, np.uint16), OpticalConfig(), valid=valid)
    assert (out[:, 0, 3] == 0).all() and (out[:, 0, :3] != 0).all()


def test_auto_rule_on_real_sen1floods11_db(real_data):
    path = real_data / "sen1floods11_spain7370579_s1s2_georef" / "Spain_7370579_S1Hand.tif"
    with rasterio.open(path) as src:
        sample = src.read()
    assert infer_sar_units(sample) == "db"


@pytest.mark.parametrize("name", ["yellow_river_sar2opt", "shuguang_sar2opt"])
def test_auto_rule_on_plain_image_sar_is_amplitude(real_data, name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(real_data / name / "t1.png") as src:
            sample = src.read()
    assert infer_sar_units(sample) == "amplitude"


def test_auto_rule_linear_and_edge_cases():
    rng = np.random.default_rng(0)
    linear = rng.gamma(4, 0.02, size=(2, 64, 64)).astype(np.float32)
    assert infer_sar_units(linear) == "linear"
    assert infer_sar_units(10 * np.log10(linear)) == "db"
    with_fill = np.where(rng.random((64, 64)) < 0.5, 0, linear[0]).astype(np.float32)
    assert infer_sar_units(with_fill) == "linear"  # zero fill is ignored
    assert infer_sar_units(np.full((4, 4), np.nan, np.float32)) == "linear"


def test_valid_mask_cases():
    opt = np.full((3, 2, 4), 500, dtype=np.uint16)
    sar = np.full((2, 2, 4), 0.05, dtype=np.float32)
    opt[:, 0, 0] = 0  # optical nodata value 0
    sar[:, 0, 1] = 0  # SAR zero fill
    sar[0, 0, 2] = np.nan  # NaN in one band
    sar[1, 0, 3] = np.inf
    opt[1, 1, 0] = 0  # one band 0 is a real (dark) value, not nodata... unless nodata=0
    mask = valid_mask(opt, sar, optical_nodata=None, sar_nodata=None)
    assert mask.tolist() == [[False, False, False, False], [True, True, True, True]]
    mask0 = valid_mask(opt, sar, optical_nodata=0, sar_nodata=None)
    assert mask0[1].tolist() == [False, True, True, True]


def test_valid_mask_sar_nodata_value_and_zero_fill_both_count():
    opt = np.full((3, 1, 3), 500, dtype=np.uint16)
    sar = np.array([[[-9999.0, 0.0, -12.0]]], dtype=np.float32)
    assert valid_mask(opt, sar, None, -9999.0).tolist() == [[False, False, True]]
    nan_nodata = np.array([[[np.nan, -3.0, -12.0]]], dtype=np.float32)
    assert valid_mask(opt, nan_nodata, None, float("nan")).tolist() == [[False, True, True]]
    assert band_valid(np.array([[1.0, 0.0]]), None).tolist() == [[True, False]]


def test_match_channels_replicates_single_band():
    x = np.arange(4, dtype=np.float32).reshape(1, 2, 2)
    y = match_channels(x, 3)
    assert y.shape == (3, 2, 2) and (y == x).all()
    dual = np.stack([np.full((2, 2), -0.5), np.full((2, 2), 0.25)]).astype(np.float32)
    mapped = match_channels(dual, 3)  # VV, VH, mean
    assert mapped.shape == (3, 2, 2) and mapped.dtype == np.float32
    np.testing.assert_allclose(mapped[2], -0.125)
    with pytest.raises(ValueError, match="choose bands"):
        match_channels(np.zeros((4, 2, 2), np.float32), 3)


def test_scales_must_be_positive():
    from pipeline.config import load_detect_config
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="optical.scale"):
        load_detect_config({"optical": {"scale": 0}})
    with pytest.raises(ConfigError, match="amplitude_scale"):
        load_detect_config({"sar": {"amplitude_scale": -1}})
