"""Scene discovery and the pairing rule (pure; one test on the real seaweedfs server)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from pipeline.catalog import (
    SceneRef,
    discover,
    list_prefix,
    list_stac,
    load_region,
    pair_scenes,
    parse_datetime,
)
from pipeline.errors import ConfigError, InputError


def _scene(role: str, day: int, name: str = "") -> SceneRef:
    when = datetime(2026, 3, day, tzinfo=UTC)
    return SceneRef(uri=f"/x/{role}/{day}{name}.tif", role=role, datetime=when, id=f"{role}{day}")


def test_pairs_latest_optical_within_window_before_each_sar():
    scenes = [_scene("optical", 1), _scene("optical", 5), _scene("optical", 12), _scene("sar", 10)]
    scenes += [_scene("sar", 30)]  # 18 days after the last optical: outside a 7-day window
    pairs, unpaired = pair_scenes(scenes, max_days_before=7)
    assert [(p.optical.id, p.sar.id) for p in pairs] == [("optical5", "sar10")]
    assert [s.id for s in unpaired] == ["sar30"]
    assert pairs[0].gap_days == 5


def test_optical_after_sar_is_never_used_and_ids_are_stable():
    scenes = [_scene("optical", 11), _scene("sar", 10)]
    assert pair_scenes(scenes, 30)[0] == []
    scenes = [_scene("optical", 9), _scene("sar", 10)]
    first = pair_scenes(scenes, 30)[0][0].id
    assert first == pair_scenes(list(reversed(scenes)), 30)[0][0].id
    assert first.startswith("20260310T000000-")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("2026-03-01_s2.tif", datetime(2026, 3, 1, tzinfo=UTC)),
        ("20260301T101500_s1.tif", datetime(2026, 3, 1, 10, 15, tzinfo=UTC)),
        ("scene.tif", None),
        ("2026-13-01.tif", None),
    ],
)
def test_dates_come_from_file_names(name, expected):
    assert parse_datetime(name) == expected


def _write_layout(root, files):
    for rel in files:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def test_prefix_layout_lists_roles_and_reports_undated_files(tmp_path):
    _write_layout(
        tmp_path,
        ["optical/2026-03-01_a.tif", "optical/notes.txt", "optical/x.tif", "sar/20260304_b.tif"],
    )
    cat = list_prefix(str(tmp_path))
    assert sorted((s.role, s.id) for s in cat.scenes) == [
        ("optical", "2026-03-01_a"),
        ("sar", "20260304_b"),
    ]
    assert cat.skipped == [str(tmp_path / "optical" / "x.tif")]
    with pytest.raises(InputError, match="does not exist"):
        list_prefix(str(tmp_path / "missing"))


def test_stac_item_collection_roles_aoi_and_relative_hrefs(tmp_path):
    def item(i, dt, props, bbox):
        asset = {"href": f"./{i}.tif", "type": "image/tiff; application=geotiff"}
        return {
            "type": "Feature",
            "id": i,
            "bbox": bbox,
            "properties": {"datetime": dt, **props},
            "assets": {"data": asset},
        }

    fc = {
        "type": "FeatureCollection",
        "features": [
            item("s2", "2026-03-01T10:00:00Z", {"eo:cloud_cover": 3}, [10, 40, 11, 41]),
            item("s1", "2026-03-04T05:00:00Z", {"sar:polarizations": ["VV"]}, [10, 40, 11, 41]),
            item("far", "2026-03-02T10:00:00Z", {}, [100, 0, 101, 1]),
        ],
    }
    path = tmp_path / "items.json"
    path.write_text(json.dumps(fc))
    cat = list_stac(str(path), aoi=(10.2, 40.2, 10.8, 40.8))
    assert {s.id: s.role for s in cat.scenes} == {"s2": "optical", "s1": "sar"}
    assert {s.uri for s in cat.scenes} == {str(tmp_path / "s2.tif"), str(tmp_path / "s1.tif")}
    path.write_text('{"type": "Feature"}')
    with pytest.raises(InputError, match="items.json: expected a STAC ItemCollection"):
        list_stac(str(path))


def test_region_config_is_validated_with_the_file_named(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("source: {uri: /data}\noutput: /out\npairing: {max_days_before: -1}\n")
    with pytest.raises(ConfigError, match=r"(?s)r.yaml.*pairing.max_days_before"):
        load_region(bad)
    good = tmp_path / "valley.yaml"
    good.write_text("source: {uri: /data}\noutput: /out\n")
    region = load_region(good)
    assert region.name == "valley" and region.pairing.max_days_before == 30


@pytest.mark.s3
def test_prefix_on_s3(s3_env, tmp_path):
    bucket = s3_env.bucket()
    fs = s3_env.filesystem()
    fs.pipe(f"{bucket}/scenes/optical/2026-03-01.tif", b"x")
    fs.pipe(f"{bucket}/scenes/sar/2026-03-03.tif", b"x")
    region = load_region(_region_file(tmp_path, f"s3://{bucket}/scenes"))
    pairs, _ = pair_scenes(discover(region).scenes, region.pairing.max_days_before)
    assert [(p.optical.uri, p.sar.uri) for p in pairs] == [
        (f"s3://{bucket}/scenes/optical/2026-03-01.tif", f"s3://{bucket}/scenes/sar/2026-03-03.tif")
    ]


def _region_file(tmp_path, uri):
    path = tmp_path / "s3region.yaml"
    path.write_text(f"source: {{uri: '{uri}'}}\noutput: {tmp_path / 'out'}\n")
    return path
