"""Quick-looks: natural colour whatever the band order, change in red, legend, scale bar, panel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image

from pipeline.config import ProductConfig
from pipeline.errors import InputError
from pipeline.products import write_products
from pipeline.products.legend import NO_SCALE_NOTE, scale_bar, scene_pixel_metres
from pipeline.products.quicklook import (
    compose,
    quicklook_shape,
    read_quicklook_sources,
    rgb_bands,
    stretch,
)
from tests.pipeline.products_support import (
    CROSSING,
    NODATA_ROWS,
    PLAIN,
    UTM,
    WGS84,
    change_mask,
    change_probability,
    metadata,
    write_optical,
    write_sar,
    write_store,
)

MASK = change_mask()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("quicklook")
    store = write_store(root / "change.zarr", UTM, MASK, change_probability(MASK))
    optical = write_optical(root / "optical.tif", UTM)
    meta = metadata(UTM, optical, sar_uri=write_sar(root / "sar.tif", UTM))
    out = write_products(store, str(root / "out"), meta, ProductConfig(quicklook_max_size=300))
    return {"out": out, "meta": meta, "root": root}


MAP_SHAPE = (233, 300)  # 700×900 scaled by 1/3; the legend strip is below it


def _image(path: str) -> np.ndarray:
    with Image.open(path) as img:
        assert img.format == "PNG" and img.mode == "RGB"
        return np.asarray(img)


def _rgb(run: dict) -> np.ndarray:
    return _image(run["out"]["quicklook"])[: MAP_SHAPE[0]]


def test_quicklook_long_side_is_bounded_and_aspect_kept(run: dict) -> None:
    full = _image(run["out"]["quicklook"])
    assert full.shape[1] == MAP_SHAPE[1] and MAP_SHAPE[0] + 20 < full.shape[0] < MAP_SHAPE[0] + 80
    strip = full[MAP_SHAPE[0] :]
    assert (strip == 255).mean() > 0.6 and (strip < 60).any()  # white strip with dark text/bar
    assert quicklook_shape((700, 900), 1024) == (700, 900)  # never upscaled
    assert quicklook_shape((10_000, 20), 500) == (500, 1)


def test_changed_pixels_are_red_nodata_grey_and_the_rest_optical(run: dict) -> None:
    rgb = _rgb(run).astype(int)
    s = 300 / 900
    rows = slice(int(CROSSING[0].start * s) + 2, int(CROSSING[0].stop * s) - 2)
    cols = slice(int(CROSSING[1].start * s) + 2, int(CROSSING[1].stop * s) - 2)
    inside = rgb[rows, cols]
    assert (inside[..., 0] > inside[..., 1] + 80).all() and (
        inside[..., 0] > inside[..., 2] + 80
    ).all()
    top = rgb[: int(NODATA_ROWS * s) - 1]
    assert (top == 128).all()
    unchanged = rgb[30:60, 30:60]  # no change there: optical grey-ish, not red-dominant
    assert np.abs(unchanged[..., 0] - unchanged[..., 1]).mean() < 40
    assert unchanged.std() > 5  # the optical texture is visible (stretched, not flat)


def test_stretch_uses_robust_percentiles_of_valid_pixels() -> None:
    band = np.arange(100, dtype=np.float32).reshape(10, 10)
    band[0, 0] = 1e6  # an outlier must not flatten the image
    valid = np.ones_like(band, bool)
    out = stretch(band, valid)
    assert out.min() == 0 and out.max() == 255
    assert 100 < out[5, 0] < 155
    assert (stretch(band, np.zeros_like(valid)) == 0).all()


def test_compose_marks_invalid_optical_as_nodata() -> None:
    rgb = np.full((3, 2, 2), 200, np.float32)
    valid = np.array([[True, False], [True, True]])
    mask = np.array([[1, 1], [0, 255]], np.uint8)
    img = compose(rgb, valid, mask)
    assert img[0, 0, 0] > 200 and img[0, 0, 1] < 120  # changed: red
    assert (img[0, 1] == 128).all() and (img[1, 1] == 128).all()  # nodata: grey
    assert (img[1, 0] == 200).all()


def test_unreadable_optical_is_an_input_error(run: dict, tmp_path: Path) -> None:
    meta = run["meta"].model_copy(update={"optical_uri": str(tmp_path / "gone.tif")})
    with pytest.raises(InputError, match="gone.tif"):
        read_quicklook_sources(meta, ProductConfig())


def _stack(
    path: Path, descriptions=None, photometric=None, bright: int = 3
) -> rasterio.DatasetReader:
    """A 4-band stack where only band `bright` is bright (so the red channel shows which band)."""
    data = np.full((4, 64, 64), 500, np.uint16)
    data[bright - 1] = 4000
    data[:, 0, 0] = 0  # keep the stretch non-degenerate
    profile = {"driver": "GTiff", "width": 64, "height": 64, "count": 4, "dtype": "uint16"}
    if photometric:
        profile["photometric"] = photometric
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if descriptions:
            dst.descriptions = descriptions
    return rasterio.open(path)


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_natural_colour_follows_band_names_not_band_order(tmp_path: Path) -> None:
    synth = ("B02 blue", "B03 green", "B04 red", "B08 nir")  # what `m2cd synth` writes
    with _stack(tmp_path / "s2.tif", synth) as src:
        assert rgb_bands(src) == ([3, 2, 1], "band descriptions")
    shuffled = ("B04", "B08", "B03", "B02")  # an unusual order, named
    with _stack(tmp_path / "shuffled.tif", shuffled) as src:
        assert rgb_bands(src)[0] == [1, 3, 4]
    with _stack(tmp_path / "plain.tif") as src:  # no names: the Sentinel-2 stack order
        assert rgb_bands(src) == ([3, 2, 1], "Sentinel-2 order B02,B03,B04")
        assert rgb_bands(src, [4, 3, 2]) == ([4, 3, 2], "products.quicklook_rgb")


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_an_rgb_image_keeps_its_colour_interpretation(tmp_path: Path) -> None:
    with rasterio.open(
        tmp_path / "rgb.tif",
        "w",
        driver="GTiff",
        width=8,
        height=8,
        count=3,
        dtype="uint8",
        photometric="RGB",
    ) as dst:
        dst.write(np.zeros((3, 8, 8), np.uint8))
    with rasterio.open(tmp_path / "rgb.tif") as src:
        assert rgb_bands(src) == ([1, 2, 3], "colour interpretation")


def test_quicklook_red_is_the_red_band_of_a_sentinel2_stack(tmp_path: Path) -> None:
    """The synth / Sentinel-2 order B02,B03,B04: band 3 (B04, red) must come out red, not blue."""
    mask = change_mask()
    store = write_store(tmp_path / "change.zarr", UTM, mask, change_probability(mask))
    optical = write_optical(tmp_path / "optical.tif", UTM)
    with rasterio.open(optical, "r+") as dst:  # east half: B04 (red) bright, B02 (blue) dark
        data = dst.read()
        east = np.arange(data.shape[2]) >= 450
        data[2] = np.where(data[2] > 0, np.where(east, 6000, 1000), 0)
        data[0] = np.where(data[0] > 0, np.where(east, 1000, 6000), 0)
        dst.write(data)
    meta = metadata(UTM, optical, optical_bands=None)
    out = write_products(store, str(tmp_path / "out"), meta, ProductConfig(quicklook_max_size=300))
    rgb = _image(out["quicklook"])[: MAP_SHAPE[0]].astype(int)
    west, east = rgb[30:60, 30:120], rgb[30:60, 180:270]
    assert (east[..., 0] > east[..., 2] + 100).mean() > 0.9  # red shows red
    assert (west[..., 2] > west[..., 0] + 100).mean() > 0.9  # blue shows blue


def test_scale_bar_is_true_to_the_ground_size() -> None:
    utm = metadata(UTM, "o.tif")
    assert scene_pixel_metres(utm) == pytest.approx(10.0)
    # 900 px scene at 10 m shown 300 px wide: 30 m a preview pixel; a quarter is 2250 m → 2 km
    assert scale_bar(30.0, 300) == (67, "2 km")
    assert scale_bar(0.5, 400) == (100, "50 m")
    lat_lon = scene_pixel_metres(metadata(WGS84, "o.tif"))  # 0.0001° at 42.77° N
    assert lat_lon == pytest.approx(0.0001 * 111_320 * np.cos(np.radians(42.765)), rel=0.01)
    assert scene_pixel_metres(metadata(PLAIN, "o.tif")) is None


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_plain_image_legend_says_there_is_no_scale(tmp_path: Path) -> None:
    from pipeline.products.legend import Legend

    legend = Legend.for_run(metadata(PLAIN, "o.tif"), (233, 300))
    assert legend.metres_per_px is None and "no scale bar" in NO_SCALE_NOTE


def test_panel_shows_pre_post_and_change_side_by_side(run: dict) -> None:
    panel = _image(run["out"]["quicklook_panel"]).astype(int)
    h, w = MAP_SHAPE
    assert panel.shape[1] == 3 * w + 2 * 4
    top = next(r for r in range(panel.shape[0]) if (panel[r, :w] == 128).all())  # nodata rows
    pre, post, change = (panel[top : top + h, i * (w + 4) : i * (w + 4) + w] for i in range(3))
    s = 1 / 3
    rows = slice(int(CROSSING[0].start * s) + 3, int(CROSSING[0].stop * s) - 3)
    cols = slice(int(CROSSING[1].start * s) + 3, int(CROSSING[1].stop * s) - 3)
    assert (change[rows, cols, 0] > change[rows, cols, 1] + 80).all()  # change: red
    assert not (pre[rows, cols, 0] > pre[rows, cols, 1] + 80).any()  # pre: no red overlay
    grey = post[..., 0]
    assert (post[..., 0] == post[..., 1]).all()  # SAR shown grey
    assert grey[rows, cols].mean() + 60 < grey[60:100, 30:60].mean()  # flooded: dark
