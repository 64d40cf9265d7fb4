"""quicklook.png: bounded size with the aspect kept, change in red, nodata grey."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.config import ProductConfig
from pipeline.errors import InputError
from pipeline.products import write_products
from pipeline.products.quicklook import compose, quicklook_shape, stretch, write_quicklook
from tests.pipeline.products_support import (
    CROSSING,
    NODATA_ROWS,
    UTM,
    change_mask,
    change_probability,
    metadata,
    write_optical,
    write_store,
)

MASK = change_mask()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("quicklook")
    store = write_store(root / "change.zarr", UTM, MASK, change_probability(MASK))
    meta = metadata(UTM, write_optical(root / "optical.tif", UTM))
    out = write_products(store, str(root / "out"), meta, ProductConfig(quicklook_max_size=300))
    return {"out": out, "meta": meta, "root": root}


def _rgb(run: dict) -> np.ndarray:
    with Image.open(run["out"]["quicklook"]) as img:
        assert img.format == "PNG" and img.mode == "RGB"
        return np.asarray(img)


def test_quicklook_long_side_is_bounded_and_aspect_kept(run: dict) -> None:
    rgb = _rgb(run)
    assert rgb.shape == (233, 300, 3)  # 700×900 scaled by 1/3
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
        write_quicklook(meta, Path(run["out"]["mask"]), tmp_path / "q.png", 100)
