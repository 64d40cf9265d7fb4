"""The quick-looks' PNG encoder: any reader gets the exact pixels back, smaller than Pillow's."""

from __future__ import annotations

import io

import numpy as np
import pytest
import rasterio
from PIL import Image

from pipeline.products.png import encode_png, write_png


def _scene_like(h: int, w: int) -> np.ndarray:
    """Smooth fields, sharp edges and noise, like a quick-look of a flood scene."""
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([120 + 60 * np.sin(x / 25), 90 + 40 * np.cos(y / 17), 70 + 0 * x], -1)
    base[(x // 40 + y // 30) % 5 == 0] = (200, 40, 40)  # the change overlay's red
    noisy = base + rng.normal(0, 6, base.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (5, 1), (233, 300), (64, 1000)])
def test_pillow_and_gdal_read_back_the_exact_pixels(tmp_path, shape):
    image = _scene_like(*shape)
    dst = write_png(image, tmp_path / "q.png")
    with Image.open(dst) as img:
        assert img.format == "PNG" and img.mode == "RGB" and img.size == shape[::-1]
        np.testing.assert_array_equal(np.asarray(img), image)
    with rasterio.open(dst) as src:  # GDAL's own PNG driver (libpng)
        assert src.driver == "PNG" and src.count == 3
        np.testing.assert_array_equal(np.moveaxis(src.read(), 0, -1), image)


def test_it_is_no_larger_than_pillows_level_one():
    image = _scene_like(512, 900)
    pillow = io.BytesIO()
    Image.fromarray(image).save(pillow, format="PNG", compress_level=1)
    assert len(encode_png(image)) <= len(pillow.getvalue())


@pytest.mark.parametrize(
    "bad", [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 3))]
)
def test_anything_but_an_rgb_uint8_image_is_refused(bad):
    with pytest.raises(ValueError, match="h×w×3 uint8"):
        encode_png(bad)
