"""Inputs whose encoding lies (issue 15 point 4): each is decoded by a stated rule, printed in the
plan and recorded in run.json, or refused in one line saying what to set.

Runs go through `flows.cli.main` in-process (the console script's own entry point; a subprocess
costs ~20 s of imports per run on the shared 2 cores); one case runs the real console script.
Equivalence is the strong check: a file in a lying encoding must give the *same probabilities* as
the honest file it encodes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from flows.cli import main
from tests.reliability.support import (
    Pair,
    detect_args,
    one_error_line,
    pair_arrays,
    run_cli,
    run_main,
    write_raster,
)

H, W = 64, 96


def _detect(capsys, pair: Pair, out: Path, *more: str) -> tuple[int, str, str]:
    return run_main(capsys, detect_args(pair, out, *more))


def _probability(out: Path) -> np.ndarray:
    import zarr

    return np.asarray(zarr.open_group(str(out / "change.zarr"), mode="r")["probability"][...])


def _run_json(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())


@pytest.fixture(scope="module")
def honest(tmp_path_factory):
    """uint16 DN optical and linear float32 SAR, and the probabilities they give."""
    d = tmp_path_factory.mktemp("honest")
    optical, sar = pair_arrays(H, W)
    pair = Pair(write_raster(d / "optical.tif", optical), write_raster(d / "sar.tif", sar))
    assert main(detect_args(pair, d / "out")) == 0
    return pair, optical, sar, _probability(d / "out")


def test_float_optical_holding_dn_is_divided_by_10000_and_matches_the_uint16_file(
    honest, tmp_path, capsys
):
    pair, optical, _, prob = honest
    lying = Pair(write_raster(tmp_path / "opt_f32.tif", optical.astype(np.float32)), pair.sar)
    rc, out, err = _detect(capsys, lying, tmp_path / "out")
    assert rc == 0, err
    assert "optical decoding: float optical, 99th percentile" in out and "DN / 10000" in out
    rules = _run_json(tmp_path / "out")["plan"]["decoding"]["optical"]
    assert any("DN / 10000" in r for r in rules)
    np.testing.assert_array_equal(_probability(tmp_path / "out"), prob)


def test_float_optical_reflectance_is_kept_and_the_rule_is_printed(honest, tmp_path, capsys):
    pair, optical, _, prob = honest
    refl = (optical.astype(np.float32) / np.float32(10000)).astype(np.float32)
    rc, out, err = _detect(
        capsys, Pair(write_raster(tmp_path / "refl.tif", refl), pair.sar), tmp_path / "out"
    )
    assert rc == 0, err
    assert ": reflectance" in out
    np.testing.assert_allclose(_probability(tmp_path / "out"), prob, atol=1e-6)


def test_float_optical_beyond_any_dn_range_is_refused_naming_optical_scale(honest, tmp_path):
    pair, optical, _, _ = honest
    huge = write_raster(tmp_path / "huge.tif", optical.astype(np.float32) * 1000)
    res = run_cli(detect_args(Pair(huge, pair.sar), tmp_path / "out"))  # the real console script
    one_error_line(res.returncode, res.stderr, huge, "set optical.scale")
    assert not (tmp_path / "out").exists()


def test_complex_sar_is_read_as_intensity_and_matches_the_linear_file(honest, tmp_path, capsys):
    pair, _, sar, prob = honest
    phase = np.random.default_rng(1).uniform(0, 2 * np.pi, sar.shape)
    slc = (np.sqrt(sar.astype(np.float64)) * np.exp(1j * phase)).astype(np.complex64)
    lying = Pair(pair.optical, write_raster(tmp_path / "slc.tif", slc))
    rc, out, err = _detect(capsys, lying, tmp_path / "out")
    assert rc == 0, err
    assert "SAR decoding: complex SAR (complex64): |z|² intensity" in out
    assert _run_json(tmp_path / "out")["plan"]["sar_units"] == "linear"
    # |z|² of the float32 SLC equals σ⁰ to float32 rounding: probabilities within 1e-3
    np.testing.assert_allclose(_probability(tmp_path / "out"), prob, atol=1e-3)


def test_complex_sar_with_units_db_is_refused(honest, tmp_path, capsys):
    pair, _, sar, _ = honest
    slc = write_raster(tmp_path / "slc.tif", np.sqrt(sar).astype(np.complex64))
    rc, _, err = _detect(capsys, Pair(pair.optical, slc), tmp_path / "out", "--set", "sar.units=db")
    one_error_line(rc, err, slc, "complex values are not dB", "sar.units")


def test_uint16_scaled_db_with_scale_offset_tags_matches_the_float_db_file(
    honest, tmp_path, capsys
):
    pair, _, sar, _ = honest
    db = 10 * np.log10(sar.astype(np.float64))
    dn = np.clip(np.round((db + 30) * 100), 1, 65535).astype(np.uint16)
    tagged = write_raster(tmp_path / "db_u16.tif", dn, nodata=0)
    with rasterio.open(tagged, "r+") as ds:
        ds.scales, ds.offsets = (0.01,), (-30.0,)
    decoded = dn.astype(np.float32) * np.float32(0.01) + np.float32(-30.0)
    reference = Pair(pair.optical, write_raster(tmp_path / "db_f32.tif", decoded))
    assert _detect(capsys, reference, tmp_path / "ref")[0] == 0
    rc, out, err = _detect(capsys, Pair(pair.optical, tagged), tmp_path / "out")
    assert rc == 0, err
    assert "GDAL scale/offset tags applied: value = DN ×0.01 -30" in out
    assert _run_json(tmp_path / "out")["plan"]["sar_units"] == "db"
    np.testing.assert_array_equal(_probability(tmp_path / "out"), _probability(tmp_path / "ref"))


def test_uint16_scaled_db_without_tags_is_refused_naming_what_to_set(honest, tmp_path, capsys):
    pair, _, sar, _ = honest
    dn = np.clip(np.round((10 * np.log10(sar) + 30) * 100), 1, 65535).astype(np.uint16)
    untagged = write_raster(tmp_path / "db_u16.tif", dn)
    rc, _, err = _detect(capsys, Pair(pair.optical, untagged), tmp_path / "out")
    one_error_line(rc, err, untagged, "constant input", "sar.dn_to_db", "sar.units")
    assert not (tmp_path / "out").exists()
    # and with what the line says to set, it runs
    rc, _, err = _detect(
        capsys, Pair(pair.optical, untagged), tmp_path / "out",
        "--set", "sar.units=db", "--set", "sar.dn_to_db=[0.01,-30]",
    )  # fmt: skip
    assert rc == 0, err


def _with_mask(path: Path, arr: np.ndarray, mask: np.ndarray, x0: float = 500_000.0) -> str:
    """A GeoTIFF with an internal GDAL mask band (0 = masked) on the 10 m grid starting at x0."""
    profile = dict(
        driver="GTiff", height=H, width=W, count=arr.shape[0], dtype=arr.dtype.name,
        crs="EPSG:32633", transform=rasterio.Affine(10.0, 0, x0, 0, -10.0, 4_600_000.0),
        tiled=True, blockxsize=64, blockysize=64,
    )  # fmt: skip
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **profile) as ds:
        ds.write(arr)
        ds.write_mask(mask)
    return str(path)


def test_a_mask_band_is_nodata_so_a_masked_half_is_not_counted_valid(honest, tmp_path, capsys):
    pair, _, sar, _ = honest
    mask = np.full((H, W), 255, np.uint8)
    mask[:, : W // 2] = 0
    masked = _with_mask(tmp_path / "sar_masked.tif", sar, mask)
    rc, out, err = _detect(capsys, Pair(pair.optical, masked), tmp_path / "out")
    assert rc == 0, err
    assert "SAR decoding: GDAL mask band honoured" in out
    assert _run_json(tmp_path / "out")["summary"]["valid_px"] == H * W // 2
    prob = _probability(tmp_path / "out")
    assert np.isnan(prob[:, : W // 2]).all() and np.isfinite(prob[:, W // 2 :]).all()


def test_an_alpha_band_is_the_mask_not_a_data_band(honest, tmp_path, capsys):
    pair, optical, _, prob = honest
    alpha = np.full((1, H, W), 65535, np.uint16)
    alpha[:, : H // 2] = 0
    rgba = write_raster(
        tmp_path / "rgba.tif", np.concatenate([optical, alpha]), photometric="RGB", alpha="YES"
    )
    rc, out, err = _detect(capsys, Pair(rgba, pair.sar), tmp_path / "out")
    assert rc == 0, err
    assert "optical decoding: GDAL alpha band honoured" in out
    assert _run_json(tmp_path / "out")["summary"]["valid_px"] == H * W // 2
    got = _probability(tmp_path / "out")
    assert np.isnan(got[: H // 2]).all()
    # the valid half sees the same bands as the 3-band file (alpha is not read as a band)
    assert np.isfinite(got[H // 2 :]).all() and np.isfinite(prob[H // 2 :]).all()


def test_a_masked_sar_on_another_grid_is_masked_after_the_warp(honest, tmp_path, capsys):
    pair, _, sar, _ = honest
    mask = np.full((H, W), 255, np.uint8)
    mask[:, : W // 2] = 0
    path = _with_mask(tmp_path / "sar_shift.tif", sar, mask, x0=500_005.0)  # half a pixel
    rc, _, err = _detect(capsys, Pair(pair.optical, path), tmp_path / "out")
    assert rc == 0, err
    valid = _run_json(tmp_path / "out")["summary"]["valid_px"]
    assert valid <= H * (W // 2), valid  # the masked half never counts
