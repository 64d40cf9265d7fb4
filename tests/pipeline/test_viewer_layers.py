"""What `m2cd view` serves, without a browser: layers from the products, the CLI entry, bad OUT."""

from __future__ import annotations

import io
import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pipeline.config import ProductConfig
from pipeline.errors import InputError
from pipeline.viewer.layers import build_layers
from pipeline.viewer.server import MapServer
from tests.pipeline.products_support import (
    SHAPE,
    shared_scene_products,
)

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")


VIEWED = ProductConfig(min_mapping_unit_px=4)  # the vector tests' run: written once for both


@pytest.fixture(scope="module")
def utm_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_scene_products(tmp_path_factory, "utm", VIEWED)["dir"]


@pytest.fixture(scope="module")
def plain_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_scene_products(tmp_path_factory, "plain", VIEWED)["dir"]


def test_layers_carry_every_polygon_and_the_summary(utm_out: Path) -> None:
    out = utm_out
    layers = build_layers(out, max_size=512)
    features = json.loads((out / "change.geojson").read_text())["features"]
    assert len(layers.polygons["features"]) == len(features) == layers.summary["polygon_count"]
    lon, lat = layers.polygons["features"][0]["geometry"]["coordinates"][0][0]
    (south, west), (north, east) = layers.bounds
    assert west <= lon <= east and south <= lat <= north  # WGS84, inside the overlay
    change = np.asarray(Image.open(io.BytesIO(layers.change_png)))
    assert change.shape[2] == 4 and max(change.shape[:2]) <= 512
    assert (change[..., 3] == 255).any() and (change[..., 3] == 0).any()  # red on transparent
    assert layers.optical_png is not None


def test_plain_image_is_shown_in_pixel_coordinates(plain_out: Path) -> None:
    layers = build_layers(plain_out)
    assert layers.mode == "pixel" and layers.bounds == [[-SHAPE[0], 0.0], [0.0, SHAPE[1]]]
    xs, ys = np.array(layers.polygons["features"][0]["geometry"]["coordinates"][0]).T
    assert (ys <= 0).all() and (xs >= 0).all()  # [col, -row]


def test_server_serves_the_page_leaflet_and_layers_and_nothing_outside(utm_out: Path) -> None:
    with MapServer(build_layers(utm_out, max_size=256)) as server:
        for path in ("", "static/leaflet/leaflet.js", "api/meta.json", "layers/change.png"):
            with urllib.request.urlopen(server.url + path) as resp:
                assert resp.status == 200 and resp.read()
        page = urllib.request.urlopen(server.url).read().decode()
        assert "http" not in page.replace('href="https://leafletjs.com"', "")  # no CDN
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(server.url + "static/../server.py")


def test_view_is_an_m2cd_command_and_refuses_a_dir_without_products(tmp_path: Path) -> None:
    from pipeline.cli import build_app

    result = CliRunner().invoke(build_app(), ["view", "--help"])
    assert result.exit_code == 0 and "OUT directory" in result.output
    with pytest.raises(InputError, match="change_mask.tif"):
        build_layers(tmp_path)
