"""item.json: a structurally valid STAC Item with the projection extension, provenance, no secrets.

Schema validation (`item.validate()`) downloads the JSON schemas, which CI cannot, so the structure
is checked by a pystac round trip and the required fields of the core spec and the extension.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyproj
import pystac
import pytest
import shapely
from shapely.geometry import shape

from pipeline.config import ProductConfig
from pipeline.products import write_products
from pipeline.products.metadata import redact_uri
from pipeline.products.stac import ChangeSummary, build_item, write_item
from tests.pipeline.products_support import (
    PLAIN,
    UTM,
    WGS84,
    change_mask,
    change_probability,
    metadata,
    write_optical,
    write_store,
)

PROJ_SCHEMA = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
SUMMARY = ChangeSummary(
    changed_px=1234, changed_m2=123_400.0, polygon_count=7, min_mapping_unit_px=4
)
SECRET = "wJalrXUtnFEMIK7MDENGbPxRfiCYzEXAMPLEKEY"


def _item_dict(tmp_path: Path, grid: tuple, **extra) -> dict:
    assets = dict.fromkeys(["zarr", "probability", "mask", "polygons", "quicklook"])
    item = build_item(metadata(grid, "/data/s2_pre.tif", **extra), assets, SUMMARY)
    return json.loads(write_item(item, tmp_path / "item.json").read_text())


def test_item_round_trips_through_pystac_with_required_fields(tmp_path: Path) -> None:
    d = _item_dict(tmp_path, UTM)
    for key in ("type", "stac_version", "id", "geometry", "bbox", "properties", "links", "assets"):
        assert key in d
    assert d["type"] == "Feature" and d["id"] == "m2cd-run-0123456789abcdef"
    assert PROJ_SCHEMA in d["stac_extensions"]
    item = pystac.Item.from_dict(d)
    assert item.to_dict(include_self_link=False, transform_hrefs=False) == d
    assert item.datetime is not None and d["properties"]["datetime"].endswith("Z")


def test_projection_extension_records_the_native_grid(tmp_path: Path) -> None:
    props = _item_dict(tmp_path, UTM)["properties"]
    assert props["proj:code"] == "EPSG:32633"
    assert pyproj.CRS.from_wkt(props["proj:wkt2"]) == pyproj.CRS.from_epsg(32633)
    assert props["proj:shape"] == [700, 900]
    assert props["proj:transform"] == list(UTM[1])
    assert props["proj:bbox"] == [500_000.0, 4_643_000.0, 509_000.0, 4_650_000.0]


def test_wgs84_footprint_covers_the_projected_grid(tmp_path: Path) -> None:
    d = _item_dict(tmp_path, UTM)
    to_ll = pyproj.Transformer.from_crs(32633, 4326, always_xy=True)
    xs = np.array([500_000, 509_000, 509_000, 500_000, 504_500])
    ys = np.array([4_650_000, 4_650_000, 4_643_000, 4_643_000, 4_646_500])
    lon, lat = to_ll.transform(xs, ys)
    footprint = shape(d["geometry"])
    assert footprint.is_valid and footprint.exterior.is_ccw
    for x, y in zip(lon, lat, strict=True):
        assert footprint.buffer(1e-9).contains(shapely.Point(x, y))
    west, south, east, north = d["bbox"]
    assert west <= lon.min() and east >= lon.max() and south <= lat.min() and north >= lat.max()
    assert footprint.area == pytest.approx(shapely.box(*d["bbox"]).area, rel=0.01)


def test_geographic_item_bbox_is_the_grid_bounds(tmp_path: Path) -> None:
    d = _item_dict(tmp_path, WGS84)
    assert d["properties"]["proj:code"] == "EPSG:4326"
    np.testing.assert_allclose(d["bbox"], [12.5, 42.73, 12.59, 42.8], atol=1e-9)


def test_plain_image_item_has_no_geometry_and_null_proj_code(tmp_path: Path) -> None:
    d = _item_dict(tmp_path, PLAIN)
    assert d["geometry"] is None and "bbox" not in d
    assert d["properties"]["proj:code"] is None
    assert d["properties"]["proj:shape"] == [700, 900]
    assert pystac.Item.from_dict(d).geometry is None


def test_assets_are_relative_with_roles_and_media_types(tmp_path: Path) -> None:
    assets = _item_dict(tmp_path, UTM)["assets"]
    assert set(assets) == {"zarr", "probability", "mask", "polygons", "quicklook"}
    for a in assets.values():
        assert a["href"].startswith("./") and a["roles"] and a["type"]
    assert assets["probability"]["type"] == pystac.MediaType.COG
    assert assets["polygons"]["type"] == "application/geo+json"
    assert "overview" in assets["quicklook"]["roles"]


def test_provenance_properties_and_event_datetimes(tmp_path: Path) -> None:
    pre, post = datetime(2024, 5, 1, 10, tzinfo=UTC), datetime(2024, 5, 9, 5, tzinfo=UTC)
    props = _item_dict(
        tmp_path, UTM, optical_datetime=pre, sar_datetime=post, resampling="bilinear"
    )["properties"]
    assert props["datetime"] == "2024-05-09T05:00:00Z"
    assert props["start_datetime"] == "2024-05-01T10:00:00Z"
    assert props["end_datetime"] == "2024-05-09T05:00:00Z"
    assert props["m2cd:inputs"] == {
        "optical": "/data/s2_pre.tif",
        "sar": "s3://scenes/post/s1_vv.tif",
    }
    assert props["m2cd:model_digest"] == "sha256:" + "ab" * 32
    assert props["m2cd:config_hash"] == "cfg0123456789"
    assert props["m2cd:run_key"] == "run-0123456789abcdef"
    assert props["m2cd:resampling"] == "bilinear"
    assert props["m2cd:changed_area_m2"] == 123_400.0 and props["m2cd:changed_pixels"] == 1234


def test_redact_uri_strips_userinfo_and_signed_queries() -> None:
    assert redact_uri(f"s3://AKIA:{SECRET}@bucket/a.tif") == "s3://bucket/a.tif"
    signed = f"https://h.example/a.tif?X-Amz-Credential=AKIA&X-Amz-Signature={SECRET}"
    assert redact_uri(signed) == "https://h.example/a.tif"
    assert redact_uri("https://h.example/a.tif?version=2") == "https://h.example/a.tif?version=2"
    assert redact_uri("/data/scene.tif") == "/data/scene.tif"


def test_written_products_carry_no_credentials(tmp_path: Path) -> None:
    mask = change_mask()
    store = write_store(tmp_path / "change.zarr", UTM, mask, change_probability(mask))
    optical = write_optical(tmp_path / "optical.tif", UTM)
    meta = metadata(UTM, optical, sar_uri=f"s3://AKIAEXAMPLE:{SECRET}@bucket/s1.tif?token={SECRET}")
    out = write_products(store, str(tmp_path / "out"), meta, ProductConfig(wgs84_geojson=True))
    assert Path(out["polygons_wgs84"]).name == "change_wgs84.geojson"
    item = json.loads(Path(out["item"]).read_text())
    assert item["assets"]["polygons_wgs84"]["href"] == "./change_wgs84.geojson"
    for uri in out.values():
        assert SECRET.encode() not in Path(uri).read_bytes()
    props = json.loads(Path(out["item"]).read_text())["properties"]
    assert props["m2cd:inputs"]["sar"] == "s3://bucket/s1.tif"
    assert props["m2cd:changed_pixels"] == int((mask == 1).sum())
    assert props["m2cd:changed_area_m2"] == pytest.approx((mask == 1).sum() * 100.0)
    assert props["m2cd:polygon_count"] == len(
        json.loads(Path(out["polygons"]).read_text())["features"]
    )


def _written_item(tmp_path: Path, **extra) -> dict:
    mask = change_mask()
    store = write_store(tmp_path / "change.zarr", UTM, mask, change_probability(mask))
    meta = metadata(UTM, write_optical(tmp_path / "optical.tif", UTM), **extra)
    out = write_products(store, str(tmp_path / "out"), meta, ProductConfig())
    return json.loads(Path(out["item"]).read_text()), out


def test_item_validates_offline_against_core_file_and_processing(tmp_path: Path) -> None:
    from pystac.validation import validate_dict

    from tests.pipeline.products_support import VENDORED_STAC_SCHEMAS, offline_stac_validator

    d, _ = _written_item(tmp_path)
    validator = offline_stac_validator()
    pystac.validation.set_validator(validator)
    try:
        validate_dict(d, extensions=list(VENDORED_STAC_SCHEMAS))  # raises on any failure
        broken = json.loads(json.dumps(d))
        broken["assets"]["mask"]["file:checksum"] = "not hex"
        with pytest.raises(pystac.errors.STACValidationError):
            validate_dict(broken, extensions=list(VENDORED_STAC_SCHEMAS))
    finally:
        pystac.validation.set_validator(pystac.validation.JsonSchemaSTACValidator())


def test_every_asset_has_its_size_and_checksum(tmp_path: Path) -> None:
    import hashlib

    d, out = _written_item(tmp_path)
    for key, asset in d["assets"].items():
        if key == "zarr":  # a directory: no single byte stream (and its chunking is the block's)
            assert "file:size" not in asset
            continue
        data = Path(out[key]).read_bytes()
        assert asset["file:size"] == len(data)
        assert asset["file:checksum"] == "1220" + hashlib.sha256(data).hexdigest()


def test_acquisition_dates_span_the_item_and_inputs_are_linked(tmp_path: Path) -> None:
    pre, post = datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 10, 9, tzinfo=UTC)
    d, _ = _written_item(tmp_path, optical_datetime=pre, sar_datetime=post)
    props = d["properties"]
    assert props["start_datetime"] == "2026-10-01T00:00:00Z"
    assert props["end_datetime"] == "2026-10-09T00:00:00Z"
    assert props["datetime"] == "2026-10-09T00:00:00Z"  # the post-event acquisition
    links = [(ln["rel"], ln["href"]) for ln in d["links"]]
    assert ("derived_from", props["m2cd:inputs"]["optical"]) in links
    assert ("derived_from", props["m2cd:inputs"]["sar"]) in links
    classes = {c["value"]: c["name"] for c in d["assets"]["mask"]["classification:classes"]}
    assert classes == {0: "no_change", 1: "change", 255: "nodata"}
    assert props["processing:software"].keys() == {"m2cd-pipeline"}


def test_unknown_dates_leave_no_interval(tmp_path: Path) -> None:
    d, _ = _written_item(tmp_path)  # the run does not know them
    assert "start_datetime" not in d["properties"] and "end_datetime" not in d["properties"]
    assert d["properties"]["datetime"] == d["properties"]["created"].replace("+00:00", "Z")
