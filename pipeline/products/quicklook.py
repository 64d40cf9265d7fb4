"""A small PNG preview: the optical scene in true colour with the change overlaid in red.

Both inputs are read decimated (rasterio `out_shape`), so GDAL serves them from overviews where they
exist (always for our mask COG) and never materialises the full scene.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from PIL import Image
from rasterio.enums import Resampling
from rasterio.errors import RasterioIOError

from pipeline.errors import InputError
from pipeline.io.storage import gdal_env, gdal_path
from pipeline.products.cog import plain_image_ok
from pipeline.products.metadata import ProductMetadata

NODATA_GREY = np.array([128, 128, 128], dtype=np.float32)
CHANGE_RED = np.array([255, 0, 0], dtype=np.float32)
CHANGE_ALPHA = 0.55


def quicklook_shape(shape: tuple[int, int], max_size: int) -> tuple[int, int]:
    """(height, width) with the long side at most `max_size`, aspect kept, never upscaled."""
    height, width = shape
    scale = min(1.0, max_size / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def stretch(band: np.ndarray, valid: np.ndarray, low: float = 2, high: float = 98) -> np.ndarray:
    """Robust linear stretch of one band to 0..255 between its 2nd and 98th valid percentiles."""
    out = np.zeros(band.shape, dtype=np.float32)
    if not valid.any():
        return out
    lo, hi = np.percentile(band[valid], [low, high])
    span = hi - lo if hi > lo else 1.0
    out[:] = np.clip((band.astype(np.float32) - lo) / span, 0, 1) * 255
    return out


def read_optical_rgb(
    meta: ProductMetadata, out_shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Decimated RGB (3×h×w float32, 0..255) and its valid mask from the optical scene."""
    uri = meta.optical_uri
    try:
        with gdal_env(uri), rasterio.open(gdal_path(uri)) as src:
            bands = meta.optical_bands or ([1, 2, 3] if src.count >= 3 else [1])
            bad = [b for b in bands if not 1 <= b <= src.count]
            if bad:
                raise InputError(uri, f"quicklook bands {bad} not in 1..{src.count}")
            data = src.read(
                bands,
                out_shape=(len(bands), *out_shape),
                resampling=Resampling.average,
                masked=True,
            )
    except RasterioIOError as exc:
        raise InputError(uri, f"cannot read the optical scene for the quicklook ({exc})") from None
    valid = ~np.ma.getmaskarray(data).any(axis=0) & np.isfinite(data.filled(0)).all(axis=0)
    raw = data.filled(0)
    rgb = np.stack([stretch(b, valid) for b in raw])
    if rgb.shape[0] == 1:
        rgb = np.repeat(rgb, 3, axis=0)
    return rgb[:3], valid


def read_mask(mask_cog: Path, out_shape: tuple[int, int]) -> np.ndarray:
    """The change mask (0/1/255) decimated with nearest, served from the COG's overviews."""
    with rasterio.open(mask_cog) as src:
        return src.read(1, out_shape=out_shape, resampling=Resampling.nearest)


def compose(rgb: np.ndarray, valid: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """h×w×3 uint8: optical, grey where nodata, semi-transparent red where changed."""
    img = np.moveaxis(rgb, 0, -1).copy()
    nodata = (mask == 255) | ~valid
    img[nodata] = NODATA_GREY
    changed = (mask == 1) & ~nodata
    img[changed] = (1 - CHANGE_ALPHA) * img[changed] + CHANGE_ALPHA * CHANGE_RED
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def write_quicklook(meta: ProductMetadata, mask_cog: Path, dst: Path, max_size: int) -> Path:
    """Write `quicklook.png` for the run; its size keeps the scene's aspect ratio."""
    out_shape = quicklook_shape(meta.shape, max_size)
    with plain_image_ok(meta):
        rgb, valid = read_optical_rgb(meta, out_shape)
        image = compose(rgb, valid, read_mask(mask_cog, out_shape))
    # zlib level 1: a quick-look is a preview; level 6 spent ~0.27 s per 1024² image in finalize
    Image.fromarray(image).save(dst, format="PNG", compress_level=1)
    return dst
