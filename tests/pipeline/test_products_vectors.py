"""GeoParquet and FlatGeobuf beside GeoJSON: the same polygons in each, read back by GDAL/pyarrow."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pyogrio
import pyproj
import pytest
import shapely

from pipeline.config import ProductConfig
from tests.pipeline.products_support import (
    PLAIN,
    UTM,
    WGS84,
    change_mask,
    shared_scene_products,
)

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
GRIDS = {"utm": UTM, "wgs84": WGS84, "plain": PLAIN}
MASK = change_mask()


@pytest.fixture(scope="module", params=list(GRIDS))
def out(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    run = shared_scene_products(
        tmp_path_factory, request.param, ProductConfig(min_mapping_unit_px=4)
    )
    return {"grid": run["grid"], **run["out"]}


def _geojson(out: dict) -> tuple[list[shapely.Geometry], list[dict]]:
    features = json.loads(Path(out["polygons"]).read_text())["features"]
    return [shapely.geometry.shape(f["geometry"]) for f in features], [
        f["properties"] for f in features
    ]


def test_geoparquet_holds_the_same_polygons_in_the_same_order(out: dict) -> None:
    geoms, props = _geojson(out)
    table = pq.read_table(out["polygons_parquet"])
    assert table.num_rows == len(geoms) > 10
    assert shapely.equals_exact(shapely.from_wkb(table["geometry"].to_pylist()), geoms, 0).all()
    assert table["id"].to_pylist() == list(range(1, len(geoms) + 1))
    for name in props[0]:
        assert table[name].to_pylist() == [p[name] for p in props]


def test_geoparquet_metadata_names_the_crs_or_says_there_is_none(out: dict) -> None:
    geo = json.loads(pq.read_schema(out["polygons_parquet"]).metadata[b"geo"])
    column = geo["columns"]["geometry"]
    assert geo["version"] == "1.1.0" and column["encoding"] == "WKB"
    crs, _ = out["grid"]
    if crs is None:
        assert "crs" in column and column["crs"] is None  # absent would mean OGC:CRS84
    else:
        assert pyproj.CRS.from_json_dict(column["crs"]) == pyproj.CRS.from_wkt(crs)
    geoms, _ = _geojson(out)
    np.testing.assert_allclose(column["bbox"], shapely.total_bounds(geoms))


def test_flatgeobuf_read_by_gdal_holds_the_same_polygons(out: dict) -> None:
    geoms, props = _geojson(out)
    meta, table = pyogrio.read_arrow(out["polygons_fgb"])
    assert len(table) == len(geoms)
    table = table.sort_by("id")  # the R-tree index stores features in Hilbert order
    fgb = shapely.from_wkb(table[meta["geometry_name"] or "wkb_geometry"].to_pylist())
    assert shapely.equals_exact(fgb, geoms, 0).all()
    assert table["area_px"].to_pylist() == [p["area_px"] for p in props]
    crs, _ = out["grid"]
    if crs is None:
        assert meta["crs"] is None
    else:
        assert pyproj.CRS.from_user_input(meta["crs"]) == pyproj.CRS.from_wkt(crs)
    info = pyogrio.read_info(out["polygons_fgb"])
    assert info["features"] == len(geoms)
