"""Regions from catalogs that exist: a real STAC API (rustac's server, in-memory backend), a static
catalog and STAC-GeoParquet give the same scenes under the same filters, and an API Item is a scene.

rustac (PyPI, dev extra) is the STAC API server that installs and runs here without a database;
its DuckDB backend for GeoParquet times out here (it fetches DuckDB extensions), so GeoParquet is
read by our own pyarrow reader and served by the memory backend from JSON.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import rasterio

from pipeline.catalog import RegionConfig, discover
from pipeline.config import DetectConfig
from pipeline.geometry import PixelBox
from pipeline.io.scene import open_scene
from pipeline.synth import synth_pair
from tests.fixtures.prefect import free_port

AOI = (13.0, 42.7, 13.3, 42.9)
INSIDE = [[13.0, 42.7], [13.2, 42.7], [13.2, 42.9], [13.0, 42.9], [13.0, 42.7]]
OUTSIDE = [[20.0, 40.0], [20.1, 40.0], [20.1, 40.1], [20.0, 40.1], [20.0, 40.0]]
# what every kind must return for collection "scenes", the AOI, May 2024, cloud ≤ 20, ascending
EXPECTED = {"s2-clear", "s1-asc"}


def _rustac() -> str:
    beside = Path(sys.executable).parent / "rustac"
    found = str(beside) if beside.exists() else shutil.which("rustac")
    if found is None:
        pytest.skip("rustac (dev extra) is not installed")
    return found


def _item(id_, when, ring, props, assets, collection="scenes"):
    xs, ys = [p[0] for p in ring], [p[1] for p in ring]
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": [],
        "id": id_,
        "collection": collection,
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "bbox": [min(xs), min(ys), max(xs), max(ys)],
        "properties": {"datetime": when, **props},
        "assets": assets,
        "links": [],
    }


@pytest.fixture(scope="module")
def bands(tmp_path_factory):
    """Real single-band rasters (blue, green, red, nir; vv) the Items point at."""
    out = tmp_path_factory.mktemp("stac-bands")
    pair = synth_pair(out / "scene", size=(96, 96), seed=4, sar_bands=1)
    files = {}
    for src_path, names in ((pair.optical, ("blue", "green", "red", "nir")), (pair.sar, ("vv",))):
        with rasterio.open(src_path) as src:
            profile = src.profile | {"count": 1}
            for i, name in enumerate(names, start=1):
                files[name] = out / f"{name}.tif"
                with rasterio.open(files[name], "w", **profile) as dst:
                    dst.write(src.read(i), 1)
    return files


@pytest.fixture(scope="module")
def items(bands):
    tif = "image/tiff; application=geotiff"

    def optical_assets():
        return {
            n: {"href": str(bands[n]), "type": tif, "eo:bands": [{"name": n, "common_name": n}]}
            for n in ("blue", "green", "red", "nir")
        }

    sar_assets = {"vv": {"href": str(bands["vv"]), "type": tif, "sar:polarizations": ["VV"]}}
    s2, s1 = {"eo:cloud_cover": 5.0}, {"sar:instrument_mode": "IW"}
    return [
        _item("s2-clear", "2024-05-01T10:00:00Z", INSIDE, s2, optical_assets()),
        _item(
            "s2-cloudy", "2024-05-03T10:00:00Z", INSIDE, {"eo:cloud_cover": 80.0}, optical_assets()
        ),
        _item("s2-far", "2024-05-02T10:00:00Z", OUTSIDE, s2, optical_assets()),
        _item("s2-april", "2024-04-01T10:00:00Z", INSIDE, s2, optical_assets()),
        _item(
            "s1-asc",
            "2024-05-09T05:00:00Z",
            INSIDE,
            s1 | {"sat:orbit_state": "ascending"},
            sar_assets,
        ),
        _item(
            "s1-desc",
            "2024-05-10T17:00:00Z",
            INSIDE,
            s1 | {"sat:orbit_state": "descending"},
            sar_assets,
        ),
        _item("other", "2024-05-05T10:00:00Z", INSIDE, s2, optical_assets(), collection="dem"),
    ]


@pytest.fixture(scope="module")
def stac_api(items, tmp_path_factory):
    """rustac serve (memory backend) on a free port, stopped by its pid."""
    folder = tmp_path_factory.mktemp("stac-api")
    path = folder / "items.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(folder / "serve.log", "wb")  # noqa: SIM115  (kept open for the server's life)
    proc = subprocess.Popen(
        [_rustac(), "serve", "--addr", f"127.0.0.1:{port}", "--create-collections", str(path)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{url}/collections", timeout=2) as resp:
                    if b"scenes" in resp.read():
                        break
            except OSError:
                time.sleep(0.3)
        else:
            pytest.fail(f"rustac serve did not answer: {(folder / 'serve.log').read_text()}")
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        log.close()


def _region(kind: str, uri: str) -> RegionConfig:
    source = {
        "kind": kind,
        "uri": uri,
        "collections": ["scenes"],
        "datetime": "2024-05-01T00:00:00Z/2024-05-31T23:59:59Z",
        "max_cloud": 20,
        "orbit_state": "ascending",
    }
    return RegionConfig(name="valley", aoi=AOI, source=source, output="/tmp/unused")


def test_stac_api_search_filters_and_its_items_are_scenes(stac_api, bands):
    catalog = discover(_region("stac-api", stac_api))
    assert {s.id for s in catalog.scenes} == EXPECTED
    optical = next(s for s in catalog.scenes if s.role == "optical")
    assert optical.uri == f"{stac_api}/collections/scenes/items/s2-clear"
    scene = open_scene(optical.uri, "optical", DetectConfig())  # an API Item as the scene
    assert scene.band_names == ("blue", "green", "red", "nir")
    assert scene.acquired.isoformat() == "2024-05-01T10:00:00+00:00"
    win = PixelBox(10, 40, 20, 60)
    with rasterio.open(bands["red"]) as src:
        np.testing.assert_array_equal(
            scene.read_window(win)[2], src.read(1, window=win.to_rasterio())
        )


def test_static_catalog_gives_the_same_scenes(items, tmp_path):
    import pystac

    cat = pystac.Catalog(id="region", description="scenes of a region")
    for data in items:
        cat.add_item(pystac.Item.from_dict(data))
    cat.normalize_hrefs(str(tmp_path / "catalog"))
    cat.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    catalog = discover(_region("stac-catalog", str(tmp_path / "catalog" / "catalog.json")))
    assert {s.id for s in catalog.scenes} == EXPECTED
    assert all(s.uri.endswith(".json") for s in catalog.scenes)  # each Item file is the scene


def test_stac_geoparquet_gives_the_same_scenes(items, tmp_path):
    src = tmp_path / "items.json"
    src.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    dst = tmp_path / "items.parquet"
    subprocess.run([_rustac(), "translate", str(src), str(dst)], check=True, timeout=60)
    catalog = discover(_region("geoparquet", str(dst)))
    assert {s.id for s in catalog.scenes} == EXPECTED
    opt = next(s for s in catalog.scenes if s.role == "optical")
    assert opt.uri.endswith(
        "blue.tif"
    )  # no Item URL: the first GeoTIFF asset, as for ItemCollections


def test_unreachable_stac_api_is_one_line_naming_it():
    from pipeline.errors import InputError

    url = f"http://127.0.0.1:{free_port()}/stac?token=SECRET-TOKEN"
    with pytest.raises(InputError) as err:
        discover(_region("stac-api", url))
    assert "127.0.0.1" in str(err.value) and "SECRET-TOKEN" not in str(err.value)
    assert "\n" not in str(err.value)
