"""Change polygons: block-by-block vectorisation equals a whole-scene one; areas, stats, MMU, CRS."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyproj
import pytest
import shapely
from rasterio.features import shapes
from scipy import ndimage
from shapely.geometry import shape

from pipeline.products.polygons import PolygonBuilder, PolygonWriter
from pipeline.products.source import Block
from pipeline.products.vectors import GeoJSONSink
from tests.pipeline.products_support import (
    CROSSING,
    PLAIN,
    SHAPE,
    UTM,
    WGS84,
    change_mask,
    change_probability,
    metadata,
)

MASK = change_mask()
PROB = change_probability(MASK)


def vectorise(
    tmp_path: Path,
    grid: tuple,
    chunk: int,
    mmu: int = 0,
    wgs84: bool = False,
    seed: int | None = None,
) -> tuple[dict, PolygonWriter]:
    """Run builder + writer over numpy blocks of `chunk` px, as write_products does over Zarr.

    Blocks go in row-major order, or shuffled with `seed` (as parallel workers would finish them).
    """
    meta = metadata(grid, "optical.tif")
    path = tmp_path / f"change-{chunk}-{mmu}{'-wgs84' if wgs84 else ''}-{seed}.geojson"
    offsets = [(r, c) for r in range(0, SHAPE[0], chunk) for c in range(0, SHAPE[1], chunk)]
    if seed is not None:
        np.random.default_rng(seed).shuffle(offsets)
    with PolygonWriter([GeoJSONSink(path)], meta, mmu, wgs84=wgs84) as writer:
        builder = PolygonBuilder(SHAPE, writer.write)
        for r, c in offsets:
            sl = (slice(r, r + chunk), slice(c, c + chunk))
            builder.add(Block(r, c, PROB[sl], MASK[sl]))
        builder.finish()
    return json.loads(path.read_text()), writer


@pytest.fixture(scope="module")
def utm256(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, PolygonWriter]:
    """The UTM scene vectorised with 256² blocks (shared by the read-only tests)."""
    return vectorise(tmp_path_factory.mktemp("polygons"), UTM, 256)


def whole_scene_polygons(grid: tuple) -> list[shapely.Geometry]:
    transform = metadata(grid, "optical.tif").affine
    changed = MASK == 1
    return [
        shape(g)
        for g, _ in shapes(
            changed.astype(np.uint8), mask=changed, connectivity=4, transform=transform
        )
    ]


def _key(g: shapely.Geometry) -> tuple:
    return (round(g.area, 6), *(round(v, 6) for v in g.bounds))


def test_blockwise_polygons_equal_whole_scene_vectorisation(utm256: tuple) -> None:
    fc, _ = utm256  # 256² blocks; other block sizes give the same bytes (test below)
    ours = sorted((shape(f["geometry"]) for f in fc["features"]), key=_key)
    ref = sorted(whole_scene_polygons(UTM), key=_key)
    assert len(ours) == len(ref) > 500  # the salt-and-pepper field makes many components
    for a, b in zip(ours, ref, strict=True):
        assert a.geom_type == "Polygon" and a.is_valid
        assert shapely.symmetric_difference(a, b).area == 0


def test_geojson_bytes_do_not_depend_on_the_block_size(tmp_path: Path, utm256: tuple) -> None:
    reference = utm256[1].sinks[0].path.read_bytes()
    for chunk in (100, 900):  # 900: one block per block-row of the scene
        assert vectorise(tmp_path, UTM, chunk)[1].sinks[0].path.read_bytes() == reference
    assert (
        vectorise(tmp_path, UTM, 128, seed=3)[1].sinks[0].path.read_bytes() == reference
    )  # any order


def test_polygon_crossing_chunk_corner_is_one_feature_with_its_pixel_area(utm256: tuple) -> None:
    fc, _ = utm256
    rect = shapely.box(
        500_000 + 230 * 10, 4_650_000 - 320 * 10, 500_000 + 300 * 10, 4_650_000 - 200 * 10
    )
    hits = [f for f in fc["features"] if shape(f["geometry"]).intersects(rect.buffer(-1))]
    assert len(hits) == 1
    props = hits[0]["properties"]
    assert props["area_px"] == 120 * 70
    assert props["area_m2"] == pytest.approx(120 * 70 * 100.0)
    assert shape(hits[0]["geometry"]).equals(rect)
    np.testing.assert_allclose(props["mean_probability"], PROB[CROSSING].mean(), atol=1e-6)
    np.testing.assert_allclose(props["max_probability"], PROB[CROSSING].max(), atol=1e-6)


def test_areas_and_statistics_match_pixel_counts(utm256: tuple) -> None:
    fc, writer = utm256
    labels, n = ndimage.label(MASK == 1)
    counts = np.bincount(labels.ravel())[1:]
    assert sorted(f["properties"]["area_px"] for f in fc["features"]) == sorted(counts.tolist())
    for f in fc["features"]:
        geom_px = shape(f["geometry"]).area / 100.0
        assert abs(geom_px - f["properties"]["area_px"]) <= 0.01 * f["properties"]["area_px"]
        assert 0.5 <= f["properties"]["mean_probability"] <= f["properties"]["max_probability"] <= 1
    assert writer.changed_px == int((MASK == 1).sum())
    assert writer.changed_m2 == pytest.approx((MASK == 1).sum() * 100.0)


def test_minimum_mapping_unit_drops_small_polygons_but_keeps_totals(
    tmp_path: Path, utm256: tuple
) -> None:
    full, _ = utm256
    fc, writer = vectorise(tmp_path, UTM, 256, mmu=5)
    kept = [f["properties"]["area_px"] for f in fc["features"]]
    assert min(kept) >= 5
    assert len(kept) == sum(f["properties"]["area_px"] >= 5 for f in full["features"])
    assert 120 * 70 in kept and 4 not in kept
    assert writer.changed_px == int((MASK == 1).sum())  # the totals describe the whole change


def test_geojson_names_the_projected_crs_and_winds_rings_per_rfc7946(utm256: tuple) -> None:
    fc, _ = utm256
    assert fc["crs"] == {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32633"}}
    ring = shapely.LinearRing(fc["features"][0]["geometry"]["coordinates"][0])
    assert ring.is_ccw


def test_geographic_scene_gets_geodesic_areas_and_no_crs_member(tmp_path: Path) -> None:
    fc, _ = vectorise(tmp_path, WGS84, 256)
    assert "crs" not in fc
    geod = pyproj.Geod(ellps="WGS84")
    for f in fc["features"][:50]:
        props = f["properties"]
        lon, lat = shape(f["geometry"]).centroid.coords[0]
        d = 0.0001  # one pixel's geodesic area at the feature's latitude
        pixel_m2 = abs(
            geod.polygon_area_perimeter([lon, lon + d, lon + d, lon], [lat, lat, lat + d, lat + d])[
                0
            ]
        )
        assert props["area_m2"] == pytest.approx(props["area_px"] * pixel_m2, rel=0.01)
        assert 12.5 <= lon <= 12.59 and 42.73 <= lat <= 42.8


def test_plain_image_polygons_are_in_pixel_coordinates_without_area(tmp_path: Path) -> None:
    fc, writer = vectorise(tmp_path, PLAIN, 256)
    assert "crs" not in fc
    assert all("area_m2" not in f["properties"] for f in fc["features"])
    rect = [f for f in fc["features"] if f["properties"]["area_px"] == 120 * 70]
    assert shape(rect[0]["geometry"]).bounds == (230.0, 200.0, 300.0, 320.0)
    assert not writer.areas.has_area


def test_optional_wgs84_export_reprojects_the_same_features(tmp_path: Path, utm256: tuple) -> None:
    native, _ = utm256
    fc, _ = vectorise(tmp_path, UTM, 256, wgs84=True)
    assert "crs" not in fc
    assert len(fc["features"]) == len(native["features"])
    to_ll = pyproj.Transformer.from_crs(32633, 4326, always_xy=True)
    for ours, theirs in zip(fc["features"][:50], native["features"][:50], strict=True):
        assert ours["properties"] == theirs["properties"]
        x, y = shape(theirs["geometry"]).centroid.coords[0]
        lon, lat = to_ll.transform(x, y)
        centroid = shape(ours["geometry"]).centroid
        assert abs(centroid.x - lon) < 1e-6 and abs(centroid.y - lat) < 1e-6
        assert shapely.LinearRing(ours["geometry"]["coordinates"][0]).is_ccw
