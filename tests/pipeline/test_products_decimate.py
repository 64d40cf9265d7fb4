"""Quick-look reads by box means over windows: the same picture as one whole-scene average, nodata
and GDAL masks left out, whatever the window size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling
from rasterio.transform import from_origin

from pipeline.io.normalize import band_valid
from pipeline.products import decimate
from pipeline.products.decimate import edges, read_box_mean

NODATA = 0


def _write(path: Path, data: np.ndarray, nodata: float | None = NODATA, **extra) -> Path:
    bands, h, w = data.shape
    profile = dict(
        driver="GTiff", width=w, height=h, count=bands, dtype=data.dtype, nodata=nodata,
        crs="EPSG:32633", transform=from_origin(500000, 4800000, 10, 10), tiled=True,
        blockxsize=128, blockysize=128, compress="deflate", **extra,
    )  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def _reference(data: np.ndarray, ok: np.ndarray, out: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """Box means straight from the definition: one box at a time."""
    rows, cols = edges(data.shape[1], out[0]), edges(data.shape[2], out[1])
    mean = np.zeros((data.shape[0], *out))
    valid = np.zeros(out, bool)
    for i in range(out[0]):
        for j in range(out[1]):
            box = ok[rows[i] : rows[i + 1], cols[j] : cols[j + 1]]
            if box.any():
                valid[i, j] = True
                vals = data[:, rows[i] : rows[i + 1], cols[j] : cols[j + 1]][:, box]
                mean[:, i, j] = vals.mean(axis=1)
    return mean, valid


def _scene(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 10000, (4, h, w)).astype(np.uint16)


def test_integer_factor_equals_gdal_average(tmp_path: Path) -> None:
    data = _scene(512, 768)
    path = _write(tmp_path / "a.tif", data)
    with rasterio.open(path) as src:
        mean, valid = read_box_mean(src, [3, 2, 1], (64, 96), lambda x: band_valid(x, NODATA))
        gdal = src.read([3, 2, 1], out_shape=(3, 64, 96), resampling=Resampling.average)
    assert valid.all()
    # GDAL rounds its integer averages; ours are the exact means
    assert np.abs(mean - gdal).max() <= 0.5
    exact = data[[2, 1, 0]].reshape(3, 64, 8, 96, 8).mean(axis=(2, 4))
    np.testing.assert_allclose(mean, exact, rtol=1e-6)


def test_uneven_factor_nodata_and_windows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _scene(500, 700, seed=1)
    data[:, 100:230, 50:333] = NODATA  # whole boxes and part-boxes of nodata
    data[:, 400:, 600:] = NODATA
    path = _write(tmp_path / "b.tif", data)
    out = (123, 171)  # factors 4.07 and 4.09: boxes of 4 and 5 pixels
    ok = (data != NODATA).any(axis=0)
    want_mean, want_valid = _reference(data[[0, 3]].astype(np.float64), ok, out)
    with rasterio.open(path) as src:
        one, one_valid = read_box_mean(src, [1, 4], out, lambda x: band_valid(x, NODATA))
        monkeypatch.setattr(decimate, "WINDOW_PX", 37 * 41)  # ~10×10 boxes a window: 13×18 windows
        many, many_valid = read_box_mean(src, [1, 4], out, lambda x: band_valid(x, NODATA))
    assert not want_valid.all() and want_valid.any()
    np.testing.assert_array_equal(one_valid, want_valid)
    np.testing.assert_allclose(one, np.where(want_valid, want_mean, 0), rtol=1e-6)
    np.testing.assert_array_equal(many_valid, one_valid)
    np.testing.assert_array_equal(many, one)


def test_gdal_mask_band_is_left_out(tmp_path: Path) -> None:
    data = _scene(256, 256, seed=2)
    path = _write(tmp_path / "c.tif", data, nodata=None)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "r+") as dst:
        mask = np.full((256, 256), 255, np.uint8)
        mask[:, :128] = 0  # the left half is masked out by the file, not by any value
        dst.write_mask(mask)
    with rasterio.open(path) as src:
        mean, valid = read_box_mean(src, [1], (32, 32), lambda x: band_valid(x, None))
    assert not valid[:, :16].any() and valid[:, 16:].all()
    exact = data[0, :, 128:].reshape(32, 8, 16, 8).mean(axis=(1, 3))
    np.testing.assert_allclose(mean[0, :, 16:], exact, rtol=1e-6)


def test_file_with_overviews_is_read_from_them(tmp_path: Path) -> None:
    data = _scene(512, 512, seed=3)
    path = _write(tmp_path / "d.tif", data)
    with rasterio.open(path, "r+") as dst:
        dst.build_overviews([2, 4, 8], Resampling.average)
    with rasterio.open(path) as src:
        mean, valid = read_box_mean(src, [1], (64, 64), lambda x: band_valid(x, NODATA))
        overview = src.read(1, out_shape=(64, 64), resampling=Resampling.average)
    assert valid.all()
    np.testing.assert_array_equal(mean[0], overview.astype(np.float32))
