"""Products read from and written to `s3://` through a real seaweedfs server (credentials enforced)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr
from rio_cogeo.cogeo import cog_validate

from pipeline.config import ProductConfig
from pipeline.io.storage import gdal_env, gdal_options, gdal_path, put_file_atomic, zarr_store
from pipeline.products import OPTIONAL_PRODUCTS, PRODUCT_FILES, STORE_PRODUCT, write_products
from tests.pipeline.products_support import (
    UTM,
    change_mask,
    change_probability,
    metadata,
    write_optical,
    write_store,
)

pytestmark = pytest.mark.s3


def test_products_round_trip_through_s3(s3_env, tmp_path: Path) -> None:
    bucket = s3_env.bucket()
    run = f"s3://{bucket}/runs/r1"
    mask = change_mask()
    store = write_store(f"{run}/change.zarr", UTM, mask, change_probability(mask))
    optical = f"s3://{bucket}/scenes/optical.tif"
    put_file_atomic(write_optical(tmp_path / "optical.tif", UTM), optical)

    out = write_products(store, f"{run}/out", metadata(UTM, optical), ProductConfig())

    written = {
        k: v for k, v in PRODUCT_FILES.items() if k not in OPTIONAL_PRODUCTS | {STORE_PRODUCT}
    }
    assert out == {k: f"{run}/out/{name}" for k, name in written.items()}
    fs = s3_env.filesystem()
    listed = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{bucket}/runs/r1/out"))
    assert listed == sorted(written.values())  # no temporary leftovers
    overviews = zarr.open_group(zarr_store(store), mode="r")["overviews"]
    assert overviews.attrs["multiscales"]["layout"][0]["asset"] == "1"  # written on S3 too
    with gdal_env(out["mask"]), rasterio.open(gdal_path(out["mask"])) as ds:
        assert ds.crs.to_epsg() == 32633 and ds.transform == rasterio.Affine(*UTM[1])
        np.testing.assert_array_equal(ds.read(1), mask)
    assert cog_validate(gdal_path(out["probability"]), config=gdal_options(out["probability"]))[0]
    item = json.loads(fs.cat(out["item"].removeprefix("s3://")))
    assert item["assets"]["probability"]["href"] == "./change_prob.tif"
    assert item["properties"]["m2cd:inputs"]["optical"] == optical
    polygons = json.loads(fs.cat(out["polygons"].removeprefix("s3://")))
    assert sum(f["properties"]["area_px"] for f in polygons["features"]) == (mask == 1).sum()
    assert fs.cat(out["quicklook"].removeprefix("s3://"))[:8] == b"\x89PNG\r\n\x1a\n"
    assert s3_env.secret_key.encode() not in fs.cat(out["item"].removeprefix("s3://"))
