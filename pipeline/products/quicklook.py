"""PNG previews a responder can read: `quicklook.png` and the `quicklook_panel.png` triptych.

`quicklook.png`: the optical scene in natural colour with the change overlaid in red and nodata grey,
above a legend strip (classes, dates, scale bar). `quicklook_panel.png`: pre (optical) | post (SAR,
dB grey) | change, side by side above the same strip. Every input is read decimated, never as a
whole scene: box means over source windows (`pipeline.products.decimate`; GDAL's overviews where
the file has them, always for our mask COG), or a WarpedVRT for a SAR scene on another grid.

Natural colour is chosen for the eye, not the model (`optical.bands` feeds the model): see
`rgb_bands` for the rule, and `products.quicklook_rgb` to override it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import ColorInterp, Resampling
from rasterio.errors import RasterioIOError
from rasterio.vrt import WarpedVRT

from pipeline.config import ProductConfig, SarConfig
from pipeline.errors import InputError
from pipeline.io.grid import GridInfo, same_grid
from pipeline.io.normalize import band_valid, infer_sar_units, sar_to_db, sar_valid
from pipeline.io.storage import gdal_env, gdal_path
from pipeline.products.cog import MASK_COLORS, plain_image_ok
from pipeline.products.decimate import read_box_mean
from pipeline.products.legend import Legend, draw_legend
from pipeline.products.metadata import ProductMetadata
from pipeline.products.png import write_png

log = logging.getLogger(__name__)

NODATA_GREY = np.array(MASK_COLORS[255][:3], dtype=np.float32)
CHANGE_RED = np.array(MASK_COLORS[1][:3], dtype=np.float32)
CHANGE_ALPHA = 0.55
PANEL_GAP = 4  # white pixels between the panels

# Sentinel-2 band names and STAC `eo` common names → the colour they stand for.
_COLOUR_WORDS = {"red": "red", "green": "green", "blue": "blue"}
_S2_COLOURS = {"B2": "blue", "B3": "green", "B4": "red"}
S2_STACK_RGB = [3, 2, 1]  # B02,B03,B04(,B08): what `m2cd synth` writes and the models read


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


def band_colour(description: str | None, tags: dict[str, str]) -> str | None:
    """'red' / 'green' / 'blue' when a band's description or tags name it, else None.

    Reads Sentinel-2 names (`B04`, `B4`, `S2_B04 red`), STAC common names (`red`) and the
    `common_name` / `eo:common_name` band tags some writers set.
    """
    texts = [description or "", tags.get("common_name", ""), tags.get("eo:common_name", "")]
    for text in texts:
        for word in re.findall(r"[A-Za-z]+\d*", text):
            colour = _COLOUR_WORDS.get(word.lower())
            s2 = re.fullmatch(r"[Bb]0?(\d{1,2})", word)
            if colour is None and s2 is not None:
                colour = _S2_COLOURS.get(f"B{int(s2.group(1))}")
            if colour is not None:
                return colour
    return None


def rgb_bands(
    src: rasterio.DatasetReader, wanted: list[int] | None = None
) -> tuple[list[int], str]:
    """1-based (red, green, blue) bands of an optical scene for the eye, and why they were chosen.

    In order: `products.quicklook_rgb`; the file's colour interpretation (an RGB GeoTIFF or PNG);
    band descriptions / tags naming the colours (Sentinel-2 names or common names); for 3 or more
    undescribed bands, the Sentinel-2 stack order B02,B03,B04(,B08), so bands 3,2,1; one band as
    grey.
    """
    if wanted is not None:
        return wanted, "products.quicklook_rgb"
    interp = {ci: i + 1 for i, ci in enumerate(src.colorinterp)}
    if all(c in interp for c in (ColorInterp.red, ColorInterp.green, ColorInterp.blue)):
        return [interp[ColorInterp.red], interp[ColorInterp.green], interp[ColorInterp.blue]], (
            "colour interpretation"
        )
    named: dict[str, int] = {}
    for i in range(1, src.count + 1):
        colour = band_colour(src.descriptions[i - 1], src.tags(i))
        if colour is not None:
            named.setdefault(colour, i)
    if len(named) == 3:
        return [named["red"], named["green"], named["blue"]], "band descriptions"
    if src.count >= 3:
        return list(S2_STACK_RGB), "Sentinel-2 order B02,B03,B04"
    return [1], "single band"


def read_optical_rgb(
    meta: ProductMetadata, out_shape: tuple[int, int], wanted: list[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Decimated natural-colour RGB (3×h×w float32, 0..255) and its valid mask."""
    uri = meta.optical_uri
    path = meta.optical_gdal_path or gdal_path(uri)
    try:
        with gdal_env(path), rasterio.open(path) as src:
            bands, why = rgb_bands(src, wanted)
            bad = [b for b in bands if not 1 <= b <= src.count]
            if bad:
                raise InputError(uri, f"products.quicklook_rgb {bad} not in 1..{src.count}")
            log.info("%s: quick-look RGB = bands %s (%s)", uri, bands, why)
            nodata = src.nodata
            raw, valid = read_box_mean(src, bands, out_shape, lambda x: band_valid(x, nodata))
    except RasterioIOError as exc:
        raise InputError(uri, f"cannot read the optical scene for the quicklook ({exc})") from None
    rgb = np.stack([stretch(b, valid) for b in raw])
    if rgb.shape[0] == 1:
        rgb = np.repeat(rgb, 3, axis=0)
    return rgb[:3], valid


def read_sar_grey(meta: ProductMetadata, out_shape: tuple[int, int]) -> np.ndarray | None:
    """The SAR scene's first band in dB, stretched to grey (h×w float32, 0..255; NaN nodata),
    on the optical grid (warped there when the SAR grid differs, as the run did).

    None (with a warning naming the file) when it cannot be read: the panel is a preview, and a
    finished run's products must not be lost to, say, credentials that expired during the run.
    """
    uri = meta.sar_uri
    path = meta.sar_gdal_path or gdal_path(uri)
    try:
        with gdal_env(path), rasterio.open(path) as src:
            dtype, nodata = src.dtypes[0], src.nodata
            if meta.crs is not None and src.crs is not None and not same_grid(src, _grid(meta)):
                raw, valid = _read_warped(src, meta, out_shape)
            else:
                mean, valid = read_box_mean(src, [1], out_shape, lambda x: sar_valid(x, nodata))
                raw = mean[0]
    except RasterioIOError as exc:
        log.warning("%s: cannot read the SAR scene, the panel shows it as nodata (%s)", uri, exc)
        return None
    return _grey(raw, valid, dtype)


def _grid(meta: ProductMetadata) -> GridInfo:
    crs = rasterio.crs.CRS.from_wkt(meta.crs) if meta.crs else None
    return GridInfo(crs=crs, transform=meta.affine, shape=meta.shape)


def _read_warped(
    src: rasterio.io.DatasetReader, meta: ProductMetadata, out_shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """A SAR scene on another grid, warped (average) straight to the quick-look's grid."""
    h, w = out_shape
    height, width = meta.shape
    scaled = meta.affine @ rasterio.Affine.scale(width / w, height / h)
    with WarpedVRT(
        src,
        crs=rasterio.crs.CRS.from_wkt(meta.crs),
        transform=scaled,
        width=w,
        height=h,
        resampling=Resampling.average,
    ) as vrt:
        data = vrt.read(1, masked=True)
    raw = data.filled(np.nan if np.dtype(src.dtypes[0]).kind == "f" else 0).astype(np.float32)
    return raw, ~np.ma.getmaskarray(data) & np.isfinite(raw) & (raw != 0)


def _grey(raw: np.ndarray, valid: np.ndarray, dtype: str) -> np.ndarray:
    """SAR values (h×w) in dB, stretched to grey; NaN where not valid."""
    db = sar_to_db(raw, infer_sar_units(raw[valid], dtype), SarConfig(), dtype)
    grey = stretch(db, valid & np.isfinite(db))
    grey[~(valid & np.isfinite(db))] = np.nan
    return grey


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


def _grey_rgb(grey: np.ndarray) -> np.ndarray:
    out = np.repeat(np.nan_to_num(grey, nan=0)[..., None], 3, axis=-1)
    out[np.isnan(grey)] = NODATA_GREY
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def panel(pre: np.ndarray, post: np.ndarray, change: np.ndarray) -> np.ndarray:
    """Three h×w×3 images side by side with white gaps."""
    h = pre.shape[0]
    gap = np.full((h, PANEL_GAP, 3), 255, np.uint8)
    return np.concatenate([pre, gap, post, gap, change], axis=1)


@dataclass(frozen=True)
class QuicklookSources:
    """The decimated scene reads a quick-look needs, apart from the mask: read before the mask
    exists, so `write_products` overlaps them with its chunk pass (`read_quicklook_sources`)."""

    rgb: np.ndarray  # 3×h×w float32, 0..255
    valid: np.ndarray  # h×w bool
    sar: np.ndarray | None  # h×w float32 grey, NaN nodata; None when unreadable


def read_quicklook_sources(meta: ProductMetadata, cfg: ProductConfig) -> QuicklookSources:
    """Read the optical RGB and the SAR grey at the quick-look size.

    Thread-safe apart from warnings: the caller holds `plain_image_ok(meta)` on its own thread
    (`warnings.catch_warnings` swaps process-wide state and must not be entered per thread).
    """
    out_shape = quicklook_shape(meta.shape, cfg.quicklook_max_size)
    rgb, valid = read_optical_rgb(meta, out_shape, cfg.quicklook_rgb)
    return QuicklookSources(rgb, valid, read_sar_grey(meta, out_shape))


def write_quicklooks(
    meta: ProductMetadata,
    cfg: ProductConfig,
    mask_cog: Path,
    dst: Path,
    panel_dst: Path,
    sources: QuicklookSources,
) -> tuple[Path, Path]:
    """Write `quicklook.png` and `quicklook_panel.png`; the maps keep the scene's aspect ratio."""
    out_shape = quicklook_shape(meta.shape, cfg.quicklook_max_size)
    with plain_image_ok(meta):
        rgb, valid = sources.rgb, sources.valid
        mask = read_mask(mask_cog, out_shape)
        change = compose(rgb, valid, mask)
        legend = Legend.for_run(meta, out_shape)
        write_png(draw_legend(change, legend), dst)
        pre = compose(rgb, valid, np.where(mask == 255, 255, 0).astype(np.uint8))
        grey = np.full(out_shape, np.nan, np.float32) if sources.sar is None else sources.sar
        post = _grey_rgb(grey)
        write_png(draw_legend(panel(pre, post, change), legend, titles=True), panel_dst)
    return dst, panel_dst
