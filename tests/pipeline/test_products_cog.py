"""write_products on finished stores: COG validity, georeferencing, overviews, data, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rio_cogeo.cogeo import cog_validate

from pipeline.config import ProductConfig
from pipeline.errors import InputError
from pipeline.products import OPTIONAL_PRODUCTS, PRODUCT_FILES, STORE_PRODUCT, write_products
from tests.pipeline.products_support import (
    PLAIN,
    SHAPE,
    UTM,
    WGS84,
    change_mask,
    change_probability,
    metadata,
    shared_scene_products,
    write_scene_products,
    write_store,
)

# Plain images have no CRS by design; rasterio warns about each one it opens.
pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")

GRIDS = {"utm": UTM, "wgs84": WGS84, "plain": PLAIN}
MASK = change_mask()
PROB = change_probability(MASK)


def make_products(root: Path, grid: tuple, chunk: int = 256, optical: Path | None = None) -> dict:
    cfg = ProductConfig(cog_blocksize=256)
    return write_scene_products(root, grid, cfg, chunk=chunk, optical=optical)


@pytest.fixture(scope="module", params=list(GRIDS))
def products(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    return shared_scene_products(tmp_path_factory, request.param, ProductConfig(cog_blocksize=256))


DEFAULT_PRODUCTS = {
    k: v for k, v in PRODUCT_FILES.items() if k not in OPTIONAL_PRODUCTS | {STORE_PRODUCT}
}


def test_every_product_is_published_and_nothing_else(products: dict) -> None:
    out_dir = products["dir"]
    assert set(products["out"]) == set(DEFAULT_PRODUCTS)
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(DEFAULT_PRODUCTS.values())
    assert all(Path(uri).is_file() for uri in products["out"].values())


@pytest.mark.parametrize("asset", ["probability", "mask"])
def test_cogs_validate_without_warnings(products: dict, asset: str) -> None:
    assert cog_validate(products["out"][asset], strict=True) == (True, [], [])


@pytest.mark.parametrize("asset", ["probability", "mask"])
def test_cog_grid_equals_the_input_grid(products: dict, asset: str) -> None:
    crs, transform = products["grid"]
    with rasterio.open(products["out"][asset]) as ds:
        assert ds.shape == SHAPE
        assert ds.transform == rasterio.Affine(*transform)
        if crs is None:
            assert ds.crs is None
        else:
            assert ds.crs == CRS.from_wkt(crs)
        assert ds.block_shapes == [(256, 256)]
        assert ds.compression.name == "deflate"
        assert ds.tags(ns="IMAGE_STRUCTURE")["PREDICTOR"] == (
            "3" if asset == "probability" else "2"
        )


def test_cog_pixels_equal_the_store(products: dict) -> None:
    with rasterio.open(products["out"]["probability"]) as ds:
        assert ds.dtypes[0] == "float32" and np.isnan(ds.nodata)
        np.testing.assert_array_equal(ds.read(1), PROB)  # NaN == NaN for assert_array_equal
    with rasterio.open(products["out"]["mask"]) as ds:
        assert ds.dtypes[0] == "uint8" and ds.nodata == 255
        np.testing.assert_array_equal(ds.read(1), MASK)


def test_overviews_reach_below_one_block(products: dict) -> None:
    for asset in ("probability", "mask"):
        with rasterio.open(products["out"][asset]) as ds:
            assert ds.overviews(1) == [2, 4]  # 350×450 ≥ 256, 175×225 < 256
            assert max(-(-s // 4) for s in SHAPE) < 256


def test_mask_overviews_are_nearest_and_probability_overviews_average(products: dict) -> None:
    with rasterio.open(products["out"]["mask"]) as ds:
        for level in range(len(ds.overviews(1))):
            with rasterio.open(products["out"]["mask"], overview_level=level) as ov:
                assert set(np.unique(ov.read(1)).tolist()) <= {0, 1, 255}
    with rasterio.open(products["out"]["probability"], overview_level=0) as ov:
        got = ov.read(1)
    # Factor 2 with even borders of the nodata strip: each overview pixel is a 2×2 mean (NaN stays).
    want = PROB.reshape(SHAPE[0] // 2, 2, SHAPE[1] // 2, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_products_are_byte_identical_for_any_chunk_size(tmp_path: Path) -> None:
    ref = make_products(tmp_path / "a", UTM, 256)["out"]
    other = make_products(tmp_path / "b", UTM, 128, optical=tmp_path / "a" / "optical.tif")["out"]
    for key, uri in ref.items():
        assert Path(uri).read_bytes() == Path(other[key]).read_bytes(), key


def test_missing_store_is_an_input_error_naming_it(tmp_path: Path) -> None:
    meta = metadata(UTM, "optical.tif")
    with pytest.raises(InputError, match="nowhere.zarr"):
        write_products(str(tmp_path / "nowhere.zarr"), str(tmp_path / "out"), meta, ProductConfig())


def test_store_on_another_grid_is_an_input_error(tmp_path: Path) -> None:
    store = write_store(tmp_path / "change.zarr", UTM, MASK[:300, :300], PROB[:300, :300])
    with pytest.raises(InputError, match=r"change.zarr.*expected the scene grid \(700, 900\)"):
        write_products(store, str(tmp_path / "out"), metadata(UTM, "o.tif"), ProductConfig())
    assert not (tmp_path / "out").exists()  # checked before anything is written


def test_scene_smaller_than_one_block_gets_valid_products(tmp_path: Path) -> None:
    mask = MASK[200:250, 230:300]  # 50×70, all inside CROSSING
    crs, (a, b, c, d, e, f) = UTM
    grid = (crs, (a, b, c + 230 * a, d, e, f + 200 * e))
    out = write_scene_products(tmp_path, grid, mask=mask)["out"]
    for asset in ("probability", "mask"):
        assert cog_validate(out[asset], strict=True) == (True, [], [])
        with rasterio.open(out[asset]) as ds:
            assert ds.shape == (50, 70) and ds.overviews(1) == []
            assert ds.transform == rasterio.Affine(*grid[1])
    features = json.loads(Path(out["polygons"]).read_text())["features"]
    assert [f["properties"]["area_px"] for f in features] == [50 * 70]
