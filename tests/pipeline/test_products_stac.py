"""item.json: a STAC Item that validates offline (core + projection, file, classification,
processing and MLM), with the acquisition interval, links to its inputs, the model, no secrets.

`item.validate()` runs against pystac's own core schemas and our extension schemas
(tests/data/stac_schemas, registered by `offline_stac_validation`); the network is blocked
while it runs, so a schema that is not here fails the test instead of being fetched.
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
from pipeline.products import stac
from pipeline.products.metadata import redact_uri
from pipeline.products.model_info import model_info
from pipeline.products.stac import ChangeSummary, build_item, write_item
from tests.pipeline.products_support import (
    OWN_STAC_SCHEMAS,
    PLAIN,
    UTM,
    WGS84,
    change_mask,
    metadata,
    offline_stac_validation,
    shared_scene_products,
    write_optical,
    write_sar,
    write_scene_products,
)

PROJ_SCHEMA = stac.PROJECTION_EXTENSION
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
    sar_uri = f"s3://AKIAEXAMPLE:{SECRET}@bucket/s1.tif?token={SECRET}"
    cfg = ProductConfig(wgs84_geojson=True)
    out = write_scene_products(tmp_path, UTM, cfg, mask=mask, sar_uri=sar_uri)["out"]
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


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One write_products run on the UTM scene (no acquisition dates known), shared here."""
    run = shared_scene_products(tmp_path_factory, "utm")
    return {"item": json.loads(Path(run["out"]["item"]).read_text()), **run}


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list:
    """Every outgoing connection fails (and is recorded): validation must not fetch anything."""
    import socket

    attempts: list = []

    def refuse(self, address, *a, **k):
        attempts.append(address)
        raise OSError(f"network blocked in this test (tried {address})")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


@pytest.fixture(scope="module")
def detected(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> dict:
    """A real detect run (plan, blocks, finalize) with a checkpoint, on a 160×192 UTM pair."""
    from pipeline.config import load_detect_config
    from pipeline.engine.local import detect
    from pipeline.engine.request import DetectRequest

    root = tmp_path_factory.mktemp("detect")
    shape = (160, 192)
    optical = write_optical(root / "optical.tif", UTM, shape=shape)
    sar = write_sar(root / "sar.tif", UTM, shape=shape)
    small = {"tiling.tile": 64, "tiling.overlap": 16, "tiling.block": 128}
    cfg = load_detect_config("default", {**small, "inference.device": "cpu"})
    req = DetectRequest(
        optical=optical, sar=sar, out=str(root / "out"), checkpoint=str(tiny_checkpoint), config=cfg
    )
    summary = detect(req, progress=False)
    item_path = root / "out" / "item.json"
    return {"summary": summary, "item": json.loads(item_path.read_text()), "path": item_path}


def test_item_of_a_real_detect_run_validates_offline(detected: dict, no_network: list) -> None:
    item = pystac.Item.from_file(str(detected["path"]))
    declared = set(detected["item"]["stac_extensions"])
    assert declared == set(OWN_STAC_SCHEMAS)  # every extension it declares has a schema here
    with offline_stac_validation() as validator:
        checked = item.validate()  # raises on any failure
    assert set(OWN_STAC_SCHEMAS) <= set(checked) and len(checked) == len(declared) + 1  # + core
    assert validator.refused == [] and no_network == []


def test_mlm_fields_are_the_checkpoints(detected: dict, tiny_checkpoint: Path) -> None:
    import m2cd

    props, assets = detected["item"]["properties"], detected["item"]["assets"]
    model = m2cd.load_checkpoint(tiny_checkpoint)
    assert props["mlm:total_parameters"] == sum(p.numel() for p in model.parameters())
    assert props["mlm:name"] == "tiny" and props["m2cd:model_config"] == model.config.name
    assert props["mlm:framework"] == "PyTorch" and props["mlm:accelerator"] is None
    optical, sar = props["mlm:input"]
    assert optical["input"]["shape"][1] == model.config.bands.optical_channels
    assert sar["input"]["shape"][1] == model.config.bands.sar_channels
    assert optical["value_scaling"] == [{"type": "z-score", "mean": 0.25, "stddev": 0.125}]
    assert sar["value_scaling"] == [{"type": "z-score", "mean": -10.0, "stddev": 15.0}]
    assert "this run read linear" in sar["description"]  # write_sar: σ⁰ linear power
    (output,) = props["mlm:output"]
    assert [c["name"] for c in output["classification:classes"]] == ["no_change", "change"]
    assert props["mlm:hyperparameters"]["threshold"] == 0.5  # the tiny checkpoint fits none
    weights = tiny_checkpoint / "weights.safetensors"
    asset = assets[stac.MODEL_ASSET]
    assert "mlm:model" in asset["roles"] and asset["href"] == str(weights)
    assert asset["file:size"] == weights.stat().st_size
    digest = m2cd.checkpoint_digest(tiny_checkpoint)
    assert asset["file:checksum"] == "1220" + digest.removeprefix("sha256:")
    assert props["m2cd:model_digest"] == digest == detected["summary"].model_digest


def test_shipped_model_is_described_from_its_checkpoint_json() -> None:
    from m2cd.checkpoint import read_checkpoint_meta
    from m2cd.pretrained import shipped_checkpoint
    from pipeline.config import load_detect_config

    path = shipped_checkpoint()
    meta = read_checkpoint_meta(path)
    prov = meta["provenance"]
    cfg = load_detect_config("default", {"products.threshold": prov["threshold"]})
    info = model_info(str(path), None, meta["digest"], cfg, "db")
    assert info.name == prov["shipped_as"] and info.framework_version == prov["torch"]
    assert info.inputs[0].bands == prov["inputs"]["optical_bands"]
    assert info.inputs[1].bands == prov["inputs"]["sar_bands"]
    assert info.threshold_source == "fitted on the checkpoint's validation data"
    assert info.weights.sha256 == meta["digest"].removeprefix("sha256:")
    assert info.training_data == prov["data"]["dataset"]


def _item_with_model(tmp_path: Path, info) -> dict:
    d = _item_dict(tmp_path, UTM, model=info)
    return json.loads(json.dumps(d))


def test_named_untrained_model_points_at_its_config(tmp_path: Path, no_network: list) -> None:
    from pipeline.config import load_detect_config
    from pipeline.engine.models import describe_model

    cfg = load_detect_config("default", {"products.threshold": 0.5})
    ref = describe_model(name="tiny")
    d = _item_with_model(tmp_path, model_info(None, "tiny", ref.digest, cfg, "linear"))
    asset = d["assets"][stac.MODEL_ASSET]
    assert asset["href"].endswith("configs/model/tiny.yaml") and asset["mlm:artifact_type"]
    assert d["properties"]["m2cd:model_trained"] is False
    with offline_stac_validation():
        pystac.Item.from_dict(d).validate()


def _break(path: str, value=None, delete: bool = False):
    """A mutation of the item dict at a /-separated path (list indexes as numbers)."""

    def apply(d: dict) -> None:
        *parents, leaf = path.split("/")
        node = d
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        key = int(leaf) if isinstance(node, list) else leaf
        if delete:
            del node[key]
        else:
            node[key] = value

    return apply


BROKEN = {
    "mlm input missing": (stac.MLM_EXTENSION, _break("properties/mlm:input", delete=True)),
    "mlm model asset without artifact type": (
        stac.MLM_EXTENSION,
        _break(f"assets/{stac.MODEL_ASSET}/mlm:artifact_type", delete=True),
    ),
    "mlm z-score without stddev": (
        stac.MLM_EXTENSION,
        _break("properties/mlm:input/0/value_scaling/0/stddev", delete=True),
    ),
    "mlm unknown field": (stac.MLM_EXTENSION, _break("properties/mlm:threshold", 0.5)),
    "mlm no model asset": (
        stac.MLM_EXTENSION,
        _break(f"assets/{stac.MODEL_ASSET}/roles", ["data"]),
    ),
    "class without value": (
        stac.CLASSIFICATION_EXTENSION,
        _break("assets/mask/classification:classes/1/value", delete=True),
    ),
    "lowercase colour hint": (
        stac.CLASSIFICATION_EXTENSION,
        _break("assets/mask/classification:classes/1/color_hint", "e61919"),
    ),
    "checksum not multihash": (
        stac.FILE_EXTENSION,
        _break("assets/mask/file:checksum", "ab" * 32),  # a bare SHA-256: no function code
    ),
    "checksum truncated": (
        stac.FILE_EXTENSION,
        _break("assets/probability/file:checksum", "1220" + "ab" * 31),
    ),
    "negative size": (stac.FILE_EXTENSION, _break("assets/mask/file:size", -1)),
    "proj:epsg (removed in v2)": (stac.PROJECTION_EXTENSION, _break("properties/proj:epsg", 32633)),
    "proj:shape of three": (stac.PROJECTION_EXTENSION, _break("properties/proj:shape", [1, 2, 3])),
    "software version not a string": (
        stac.PROCESSING_EXTENSION,
        _break("properties/processing:software/m2cd-pipeline", 1),
    ),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_each_schema_rejects_a_broken_item(detected: dict, case: str, no_network: list) -> None:
    schema, mutate = BROKEN[case]
    broken = json.loads(json.dumps(detected["item"]))
    mutate(broken)
    # the JSON as a reader gets it (Item.from_dict would migrate some fields, e.g. proj:epsg)
    with offline_stac_validation(), pytest.raises(pystac.errors.STACValidationError) as err:
        pystac.validation.validate_dict(broken)
    assert f"against schema at {schema}" in str(err.value)
    assert no_network == []


def test_mask_classes_match_the_cog_colour_table(written: dict) -> None:
    import rasterio

    classes = written["item"]["assets"]["mask"]["classification:classes"]
    with rasterio.open(written["out"]["mask"]) as ds:
        palette = ds.colormap(1)
    for c in classes:
        red, green, blue, _ = palette[c["value"]]
        assert c["color_hint"] == f"{red:02X}{green:02X}{blue:02X}", c["name"]
    assert {c["value"]: c["name"] for c in classes} == {0: "no_change", 1: "change", 255: "nodata"}
    assert [c["value"] for c in classes if c.get("nodata")] == [255]


def test_every_asset_has_its_size_and_checksum(written: dict) -> None:
    import hashlib

    d, out = written["item"], written["out"]
    for key, asset in d["assets"].items():
        if key == "zarr":  # a directory: no single byte stream (and its chunking is the block's)
            assert "file:size" not in asset
            continue
        data = Path(out[key]).read_bytes()
        assert asset["file:size"] == len(data)
        assert asset["file:checksum"] == "1220" + hashlib.sha256(data).hexdigest()


def test_acquisition_dates_span_the_item_and_inputs_are_linked(written: dict) -> None:
    pre, post = datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 10, 9, tzinfo=UTC)
    meta = metadata(
        UTM, str(written["root"] / "optical.tif"), optical_datetime=pre, sar_datetime=post
    )
    assets = {k: Path(v) for k, v in written["out"].items() if k != "item"}
    d = build_item(meta, {"zarr": None, **assets}, SUMMARY).to_dict(include_self_link=False)
    props = d["properties"]
    assert props["start_datetime"] == "2026-10-01T00:00:00Z"
    assert props["end_datetime"] == "2026-10-09T00:00:00Z"
    assert props["datetime"] == "2026-10-09T00:00:00Z"  # the post-event acquisition
    links = [(ln["rel"], ln["href"]) for ln in d["links"]]
    assert ("derived_from", props["m2cd:inputs"]["optical"]) in links
    assert ("derived_from", props["m2cd:inputs"]["sar"]) in links
    assert props["processing:software"].keys() == {"m2cd-pipeline"}


def test_item_times_take_the_dates_as_arguments() -> None:
    pre, post = datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 10, 9, tzinfo=UTC)
    created = datetime(2026, 12, 1, tzinfo=UTC)
    assert stac.item_times(post, pre, created) == (pre, pre, post)  # given the wrong way round
    assert stac.item_times(pre, None, created) == (pre, None, None)
    assert stac.item_times(None, None, created) == (created, None, None)


def test_unknown_dates_leave_no_interval(written: dict) -> None:
    d = written["item"]  # the run does not know them
    assert "start_datetime" not in d["properties"] and "end_datetime" not in d["properties"]
    assert d["properties"]["datetime"] == d["properties"]["created"].replace("+00:00", "Z")
