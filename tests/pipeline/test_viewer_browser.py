"""`m2cd view` in a real headless Chromium (Debian's chromium + chromedriver, driven by selenium).

The products are the synthetic UTM and plain-image scenes of products_support, so the change is
known: the CROSSING rectangle (120 × 70 px of 10 m = 84 ha) must be red on screen exactly where
it lies on the ground, and clicking it must show its area.
"""

from __future__ import annotations

import io
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyproj
import pytest
from PIL import Image

from pipeline.config import ProductConfig
from pipeline.products import write_products
from pipeline.viewer.layers import build_layers
from pipeline.viewer.server import MapServer
from tests.pipeline.products_support import (
    CROSSING,
    PLAIN,
    UTM,
    change_mask,
    change_probability,
    metadata,
    write_optical,
    write_sar,
    write_store,
)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None,
        reason="no chromium/chromedriver binary: `make browser` installs Debian's (needs root)",
    ),
    pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning"),
]
MASK = change_mask()
CENTRE = ((CROSSING[0].start + CROSSING[0].stop) / 2, (CROSSING[1].start + CROSSING[1].stop) / 2)
NO_CHANGE = (150.0, 400.0)  # (row, col): optical only, far from any change


def _products(root: Path, grid: tuple) -> Path:
    store = write_store(root / "change.zarr", grid, MASK, change_probability(MASK))
    optical = write_optical(root / "optical.tif", grid)
    meta = metadata(grid, optical, sar_uri=write_sar(root / "sar.tif", grid))
    write_products(store, str(root / "out"), meta, ProductConfig(min_mapping_unit_px=4))
    return root / "out"


@pytest.fixture(scope="module")
def browser() -> Iterator:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in CI
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1200,800",
        "--force-device-scale-factor=1",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)  # downloads nothing
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module", params=["utm", "plain"])
def page(request: pytest.FixtureRequest, tmp_path_factory, browser) -> Iterator[dict]:
    grid = {"utm": UTM, "plain": PLAIN}[request.param]
    out = _products(tmp_path_factory.mktemp(f"view-{request.param}"), grid)
    with MapServer(build_layers(out)) as server:
        browser.get_log("browser")  # drop what earlier pages logged
        browser.get(server.url)
        deadline = time.monotonic() + 30
        while browser.execute_script("return document.body.dataset.ready") != "true":
            assert time.monotonic() < deadline, "the map did not finish loading in 30 s"
            time.sleep(0.1)
        yield {"driver": browser, "grid": grid, "logs": browser.get_log("browser")}


def _latlng(grid: tuple, row: float, col: float) -> tuple[float, float]:
    crs, (a, b, c, d, e, f) = grid
    x, y = a * col + b * row + c, d * col + e * row + f
    if crs is None:
        return -row, col  # CRS.Simple: lat = -row, lng = col
    lon, lat = pyproj.Transformer.from_crs(
        pyproj.CRS.from_wkt(crs), 4326, always_xy=True
    ).transform(x, y)
    return lat, lon


def _screen_point(page: dict, row: float, col: float) -> tuple[int, int]:
    lat, lng = _latlng(page["grid"], row, col)
    p = page["driver"].execute_script(
        "const m = window.m2cdView.map; const r = m.getContainer().getBoundingClientRect();"
        "const p = m.latLngToContainerPoint([arguments[0], arguments[1]]);"
        "return [p.x + r.left, p.y + r.top];",
        lat,
        lng,
    )
    return round(p[0]), round(p[1])


def _screenshot(driver) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB"))


def test_page_loads_with_no_console_error(page: dict) -> None:
    errors = [e for e in page["logs"] if e["level"] in ("SEVERE", "ERROR")]
    assert errors == []
    summary = page["driver"].find_element("id", "summary").text
    assert "Polygons" in summary and "Changed pixels" in summary


def test_change_pixels_appear_where_the_change_is(page: dict) -> None:
    driver = page["driver"]
    driver.execute_script(  # the change layer alone on top of the optical, fully opaque
        "const v = window.m2cdView; v.map.removeLayer(v.polygons); v.changeLayer.setOpacity(1);"
    )
    try:
        shot = _screenshot(driver)
        x, y = _screen_point(page, *CENTRE)
        changed = shot[y - 3 : y + 4, x - 3 : x + 4].reshape(-1, 3).astype(int)
        assert (changed[:, 0] > 200).all() and (changed[:, 1] < 60).all(), changed[:3]
        x, y = _screen_point(page, *NO_CHANGE)
        plain = shot[y - 3 : y + 4, x - 3 : x + 4].reshape(-1, 3).astype(int)
        assert not (plain[:, 0] > plain[:, 1] + 80).any()  # optical grey, not red
    finally:
        driver.execute_script(
            "const v = window.m2cdView; v.polygons.addTo(v.map); v.changeLayer.setOpacity(0.7);"
        )


def test_opacity_control_changes_the_change_layer(page: dict) -> None:
    driver = page["driver"]
    driver.execute_script(
        "const s = document.getElementById('opacity'); s.value = 25;"
        "s.dispatchEvent(new Event('input'));"
    )
    opacity = driver.execute_script("return window.m2cdView.changeLayer.getElement().style.opacity")
    assert float(opacity) == 0.25
    assert driver.find_element("id", "opacity-value").text == "25 %"


def test_click_on_a_polygon_shows_its_area(page: dict) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    driver = page["driver"]
    x, y = _screen_point(page, *CENTRE)
    ActionChains(driver).move_by_offset(0, 0).perform()
    body = driver.find_element(By.TAG_NAME, "body")
    rect = body.rect
    ActionChains(driver).move_to_element_with_offset(
        body, x - rect["width"] / 2, y - rect["height"] / 2
    ).click().perform()
    popup = WebDriverWait(driver, 10).until(
        expected_conditions.visibility_of_element_located((By.CSS_SELECTOR, ".polygon-popup"))
    )
    text = popup.text
    assert "Pixels: 8,400" in text  # 120 × 70 px
    if page["grid"][0] is not None:
        assert "Area: 84.00 ha" in text  # 8400 px × 100 m²
    else:
        assert "Area" not in text  # no CRS, no ground area
