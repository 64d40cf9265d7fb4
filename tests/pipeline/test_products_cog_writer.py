"""The streaming COG writer, read back by GDAL: pixels, overviews, metadata and validity for any
chunking, thread count and file size, and a clear error when chunks leave a hole."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rio_cogeo.cogeo import cog_validate

from pipeline.products import cog_writer
from pipeline.products.cog import MASK_LAYER, PROBABILITY_LAYER, Layer
from pipeline.products.cog_writer import CogWriter
from tests.pipeline.products_support import UTM, metadata

SHAPE = (1000, 777)  # odd width: overview edges average fewer than 4 pixels
TILE = 128


def _probability(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    prob = rng.random(SHAPE, dtype=np.float32)
    prob[rng.random(SHAPE) < 0.05] = np.nan  # scattered nodata
    prob[:, :101] = np.nan  # and an odd-width nodata strip
    return prob


def _mask(prob: np.ndarray) -> np.ndarray:
    return np.where(np.isnan(prob), 255, prob > 0.5).astype(np.uint8)


def _write(path: Path, layer: Layer, data: np.ndarray, chunk: int, threads: int = 2, **kw) -> Path:
    meta = metadata(UTM, "optical.tif", shape=SHAPE)
    level = kw.pop("level", 1)
    with (
        ThreadPoolExecutor(threads) as pool,
        CogWriter(path, layer, meta, TILE, level, pool, **kw) as out,
    ):
        for r in range(0, SHAPE[0], chunk):
            for c in range(0, SHAPE[1], chunk):
                out.write(r, c, data[r : r + chunk, c : c + chunk])
    return path


def _nanmean_2x2(a: np.ndarray) -> np.ndarray:
    """The reference overview step, written independently of the writer's."""
    h, w = a.shape
    padded = np.full((h + h % 2, w + w % 2), np.nan, np.float64)
    padded[:h, :w] = a
    quads = padded.reshape(padded.shape[0] // 2, 2, padded.shape[1] // 2, 2)
    with np.errstate(invalid="ignore"), pytest.warns(RuntimeWarning, match="Mean of empty"):
        return np.nanmean(quads, axis=(1, 3)).astype(np.float32)


@pytest.mark.parametrize("level", [1, 6])  # ISA-L, then zlib
def test_gdal_reads_back_the_pixels_overviews_and_metadata(tmp_path: Path, level: int) -> None:
    prob = _probability()
    path = _write(tmp_path / "prob.tif", PROBABILITY_LAYER, prob, chunk=300, level=level)
    assert cog_validate(str(path), strict=True) == (True, [], [])
    with rasterio.open(path) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert ds.crs == CRS.from_wkt(UTM[0]) and ds.transform == rasterio.Affine(*UTM[1])
        assert ds.block_shapes == [(TILE, TILE)] and ds.compression.name == "deflate"
        assert np.isnan(ds.nodata) and ds.descriptions == (PROBABILITY_LAYER.description,)
        assert ds.tags()["M2CD_MODEL_DIGEST"] == "sha256:" + "ab" * 32
        assert ds.overviews(1) == [2, 4, 8]  # 1000 → 500 → 250 → 125 < 128
        np.testing.assert_array_equal(ds.read(1), prob)
    want = prob
    for k in range(3):
        want = _nanmean_2x2(want)
        with rasterio.open(path, overview_level=k) as ov:
            np.testing.assert_allclose(ov.read(1), want, rtol=1e-6)


def test_mask_keeps_its_palette_and_nearest_overviews(tmp_path: Path) -> None:
    mask = _mask(_probability())
    path = _write(tmp_path / "mask.tif", MASK_LAYER, mask, chunk=200)
    assert cog_validate(str(path), strict=True) == (True, [], [])
    with rasterio.open(path) as ds:
        assert ds.nodata == 255 and ds.colormap(1)[1] == (230, 25, 25, 255)
        assert ds.tags(ns="IMAGE_STRUCTURE")["PREDICTOR"] == "2"
        np.testing.assert_array_equal(ds.read(1), mask)
    with rasterio.open(path, overview_level=1) as ov:
        np.testing.assert_array_equal(ov.read(1), mask[::4, ::4])


def test_same_bytes_for_any_chunking_and_thread_count(tmp_path: Path) -> None:
    prob = _probability(seed=3)
    ref = _write(tmp_path / "a.tif", PROBABILITY_LAYER, prob, chunk=TILE * 2).read_bytes()
    for i, (chunk, threads) in enumerate([(TILE, 1), (100, 3), (SHAPE[0], 2)]):
        got = _write(tmp_path / f"{i}.tif", PROBABILITY_LAYER, prob, chunk, threads)
        assert got.read_bytes() == ref, (chunk, threads)


def test_bigtiff_above_the_classic_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cog_writer, "_CLASSIC_LIMIT", 0)  # as if the file passed 4 GiB
    prob = _probability()
    path = _write(tmp_path / "big.tif", PROBABILITY_LAYER, prob, chunk=256)
    assert path.read_bytes()[:4] == b"II+\0"
    assert cog_validate(str(path), strict=True) == (True, [], [])
    with rasterio.open(path) as ds:
        np.testing.assert_array_equal(ds.read(1), prob)


def test_chunks_leaving_a_hole_are_an_error_naming_the_file(tmp_path: Path) -> None:
    meta = metadata(UTM, "optical.tif", shape=SHAPE)
    path = tmp_path / "prob.tif"
    with (
        ThreadPoolExecutor(2) as pool,
        pytest.raises(ValueError, match="prob.tif.*incomplete"),
        CogWriter(path, PROBABILITY_LAYER, meta, TILE, 1, pool) as out,
    ):
        out.write(0, 0, _probability()[:500])  # the lower half never arrives
    assert list(tmp_path.iterdir()) == []  # no COG, no spool left behind
