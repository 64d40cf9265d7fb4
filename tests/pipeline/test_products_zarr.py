"""change.zarr as readers see it: a plain `xr.open_zarr`, the GeoZarr conventions, the overviews."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import dask
import jsonschema
import numpy as np
import pytest
import rasterio
import xarray as xr

from pipeline.config import ProductConfig
from tests.pipeline.products_support import (
    SHAPE,
    change_mask,
    change_probability,
    shared_scene_products,
)

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
SCHEMAS = Path(__file__).parents[1] / "data" / "zarr_conventions"
MASK = change_mask()
PROB = change_probability(MASK)


@pytest.fixture(scope="module", params=["utm", "plain"])
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    return shared_scene_products(tmp_path_factory, request.param, ProductConfig(cog_blocksize=256))


def _node(path: Path) -> dict:
    return json.loads((path / "zarr.json").read_text())


def _validate(node: dict, schema: str) -> None:
    jsonschema.Draft7Validator(json.loads((SCHEMAS / schema).read_text())).validate(node)


def test_plain_open_zarr_gives_uint8_mask_and_nan_probability_without_warning(run: dict) -> None:
    # synchronous: a dask client closed by an earlier test in the session must not be used
    with warnings.catch_warnings(), dask.config.set(scheduler="synchronous"):
        warnings.simplefilter("error")  # the consolidated-metadata warning would fail here
        ds = xr.open_zarr(run["store"])  # default arguments
        mask, prob = ds["mask"].values, ds["probability"].values
    assert ds["mask"].dtype == np.uint8 and ds["probability"].dtype == np.float32
    np.testing.assert_array_equal(mask, MASK)
    assert np.isnan(prob[MASK == 255]).all() and not np.isnan(prob[MASK != 255]).any()
    assert ds["mask"].attrs["flag_values"] == [0, 1, 255]
    assert ds["mask"].attrs["flag_meanings"].split() == ["no_change", "change", "nodata"]


def test_root_follows_the_spatial_and_proj_conventions(run: dict) -> None:
    root = _node(run["store"])
    _validate(root, "spatial-v1.json")
    names = [c["name"] for c in root["attributes"]["zarr_conventions"]]
    if run["grid"][0] is None:
        assert names == ["spatial"] and not any(k.startswith("proj:") for k in root["attributes"])
    else:
        _validate(root, "proj-v1.json")
        assert names == ["spatial", "proj:"] and root["attributes"]["proj:code"] == "EPSG:32633"
    assert root["consolidated_metadata"]["metadata"]["overviews/1/mask"]["data_type"] == "uint8"


def test_overviews_match_the_cog_overviews(run: dict) -> None:
    overviews = run["store"] / "overviews"
    group = _node(overviews)
    _validate(group, "spatial-v1.json")
    layout = group["attributes"]["multiscales"]["layout"]
    with rasterio.open(run["out"]["mask"]) as cog:
        assert len(layout) == len(cog.overviews(1)) >= 1
    for level, item in enumerate(layout):
        assert item["asset"] == str(level + 1)
        _validate(_node(overviews / item["asset"]), "spatial-v1.json")
        ds = xr.open_zarr(run["store"], group=f"overviews/{item['asset']}")
        assert list(ds["mask"].shape) == item["spatial:shape"]
        with rasterio.open(run["out"]["mask"], overview_level=level) as cog:
            np.testing.assert_array_equal(ds["mask"].compute(scheduler="synchronous"), cog.read(1))
        a, b, c, d, e, f = item["spatial:transform"]
        h, w = item["spatial:shape"]
        base = run["grid"][1]
        assert (c, f) == (base[2], base[5])  # same origin, pixels grown by the level's factor
        assert (a * w, e * h) == pytest.approx((base[0] * SHAPE[1], base[4] * SHAPE[0]))
        assert ds["mask"].dtype == np.uint8 and ds["probability"].dtype == np.float32
    assert layout[0]["transform"]["scale"] == pytest.approx([2.0, 2.0], rel=0.01)
