"""The legend strip under the quick-looks: classes, acquisition dates and a scale bar.

The strip sits below the map (it hides no pixel). The scale bar needs the ground size of a preview
pixel: projected CRSs give it from the transform (× the axis unit in metres), geographic ones from
the geodesic length of one pixel step at the scene centre. Plain images without CRS have no ground
size, so they get no bar and the legend says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyproj
from PIL import Image, ImageDraw, ImageFont

from pipeline.products.cog import MASK_COLORS
from pipeline.products.metadata import ProductMetadata

NO_SCALE_NOTE = "no CRS: pixel coordinates, no scale bar"
PANEL_TITLES = ("pre: optical", "post: SAR (dB)", "change")
_BAR_FRACTION = 0.25  # the bar is at most a quarter of the map's width


@dataclass(frozen=True)
class Legend:
    """What the quicklook legend needs to draw a scale bar and dates, decided once per run."""

    metres_per_px: float | None  # ground size of one preview pixel; None without CRS
    map_width: int  # preview pixels of one map (the bar is scaled to it)
    pre: str | None  # acquisition dates, when known
    post: str | None

    @classmethod
    def for_run(cls, meta: ProductMetadata, out_shape: tuple[int, int]) -> Legend:
        """The legend of a run's preview: the scale bar is measured in preview pixels, hence the
        scene-to-preview factor."""
        factor = meta.shape[1] / out_shape[1]  # scene pixels per preview pixel (aspect kept)
        px = scene_pixel_metres(meta)
        return cls(
            metres_per_px=None if px is None else px * factor,
            map_width=out_shape[1],
            pre=meta.optical_datetime.date().isoformat() if meta.optical_datetime else None,
            post=meta.sar_datetime.date().isoformat() if meta.sar_datetime else None,
        )


def scene_pixel_metres(meta: ProductMetadata) -> float | None:
    """Ground width of one scene pixel in metres (along the x axis), None without CRS."""
    if meta.crs is None:
        return None
    crs = pyproj.CRS.from_wkt(meta.crs)
    a, _, c, d, _, f = meta.transform
    if crs.is_geographic:
        h, w = meta.shape
        lon, lat = meta.to_crs(np.array([w / 2]), np.array([h / 2]))
        _, _, dist = crs.get_geod().inv(lon[0], lat[0], lon[0] + a, lat[0] + d)
        return float(dist)
    unit = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
    return math.hypot(a, d) * unit


def scale_bar(metres_per_px: float, map_width: int) -> tuple[int, str]:
    """(bar length in pixels, label): the longest 1/2/5×10ᵏ m that fits a quarter of the map."""
    limit = _BAR_FRACTION * map_width * metres_per_px
    k = math.floor(math.log10(limit))
    metres = max(m * 10**k for m in (1, 2, 5) if m * 10**k <= limit)
    label = f"{metres / 1000:g} km" if metres >= 1000 else f"{metres:g} m"
    return max(1, round(metres / metres_per_px)), label


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def draw_legend(image: np.ndarray, legend: Legend, titles: bool = False) -> np.ndarray:
    """`image` (h×w×3 uint8) with the legend strip below it (and panel titles above when asked)."""
    h, w = image.shape[:2]
    size = max(11, min(18, w // 40))
    font = _font(size)
    pad = size // 2
    line = size + pad
    strip = Image.new("RGB", (w, 2 * line + pad), "white")
    draw = ImageDraw.Draw(strip)
    x = pad
    for value, text in ((1, "change"), (255, "nodata")):
        draw.rectangle([x, pad, x + size, pad + size], fill=MASK_COLORS[value][:3], outline="black")
        x += size + pad // 2
        draw.text((x, pad), text, fill="black", font=font)
        x += int(draw.textlength(text, font=font)) + 2 * pad
    dates = []
    if legend.pre:
        dates.append(f"pre {legend.pre}")
    if legend.post:
        dates.append(f"post {legend.post}")
    note = " · ".join(dates) if dates else "acquisition dates unknown"
    if legend.metres_per_px is None:
        note = f"{note} · {NO_SCALE_NOTE}"
    else:
        length, label = scale_bar(legend.metres_per_px, legend.map_width)
        y = pad + size // 2
        x0 = w - pad - length
        draw.rectangle([x0, y - 2, x0 + length, y + 2], fill="black")
        for tick in (x0, x0 + length):
            draw.line([tick, y - size // 2, tick, y + size // 2], fill="black", width=2)
        tw = draw.textlength(label, font=font)
        draw.text((x0 - pad - tw, pad), label, fill="black", font=font)
    draw.text((pad, pad + line), note, fill="black", font=font)
    parts = [image, np.asarray(strip)]
    if titles:
        parts.insert(0, _titles(w, size, font, pad))
    return np.concatenate(parts, axis=0)


def _titles(width: int, size: int, font: ImageFont.ImageFont, pad: int) -> np.ndarray:
    """A white band with one title centred over each of three equal panels."""
    band = Image.new("RGB", (width, size + 2 * pad), "white")
    draw = ImageDraw.Draw(band)
    third = width / 3
    for i, title in enumerate(PANEL_TITLES):
        tw = draw.textlength(title, font=font)
        draw.text((third * i + (third - tw) / 2, pad), title, fill="black", font=font)
    return np.asarray(band)
