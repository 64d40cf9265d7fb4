"""What the map shows, rendered once from a run's products: two PNG overlays, polygons, figures.

Leaflet draws an image overlay as a rectangle in Web Mercator, so the overlays are warped to
EPSG:3857 on a grid whose corners are the overlay's bounds: every pixel then lands where it
belongs, whatever the scene CRS (UTM, lon/lat). Plain images without CRS are shown in pixel
coordinates (Leaflet's CRS.Simple: lat = -row, lng = col) with their polygons in the same frame.

Memory: each overlay is at most `max_size` px on its long side (read decimated, from the COG's
overviews), and the polygons are the vectors' features (a viewer shows them all at once).
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyogrio
import pyproj
import rasterio
import shapely
from PIL import Image
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.warp import calculate_default_transform

from pipeline.errors import InputError
from pipeline.products import PRODUCT_FILES
from pipeline.products.cog import MASK_COLORS
from pipeline.products.quicklook import rgb_bands, stretch

log = logging.getLogger(__name__)

WEB_MERCATOR = CRS.from_epsg(3857)
CHANGE_RGBA = (*MASK_COLORS[1][:3], 255)
NODATA_RGBA = (*MASK_COLORS[255][:3], 110)  # a veil: nodata is seen, the optical still shows


@dataclass
class MapLayers:
    """Everything the page asks the server for."""

    mode: str  # "geo" (Leaflet lat/lng) or "pixel" (CRS.Simple)
    bounds: list[list[float]]  # [[south, west], [north, east]] in the page's frame
    change_png: bytes
    optical_png: bytes | None
    polygons: dict[str, Any]
    summary: dict[str, Any] = field(default_factory=dict)

    def meta(self) -> dict[str, Any]:
        """The page's first request: mode, bounds, whether an optical layer exists and the run
        summary."""
        return {
            "mode": self.mode,
            "bounds": self.bounds,
            "optical": self.optical_png is not None,
            "summary": self.summary,
        }


def _png(rgba: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgba).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _target_grid(
    src: rasterio.DatasetReader, max_size: int
) -> tuple[rasterio.Affine, int, int] | None:
    """A Web Mercator grid covering the scene, at most `max_size` px a side; None without CRS."""
    if src.crs is None:
        return None
    transform, width, height = calculate_default_transform(
        src.crs, WEB_MERCATOR, src.width, src.height, *src.bounds
    )
    scale = max(width, height) / max_size
    if scale > 1:  # same extent, fewer (larger) pixels
        small_w, small_h = max(1, round(width / scale)), max(1, round(height / scale))
        transform = transform @ rasterio.Affine.scale(width / small_w, height / small_h)
        width, height = small_w, small_h
    return transform, width, height


def _read(
    src: rasterio.DatasetReader,
    bands: list[int],
    grid: tuple[rasterio.Affine, int, int] | None,
    shape: tuple[int, int],
    resampling: Resampling,
) -> np.ma.MaskedArray:
    """Bands on the overlay grid: warped to Web Mercator, or decimated for plain images."""
    if grid is None:
        return src.read(bands, out_shape=(len(bands), *shape), resampling=resampling, masked=True)
    transform, width, height = grid
    with WarpedVRT(
        src,
        crs=WEB_MERCATOR,
        transform=transform,
        width=width,
        height=height,
        resampling=resampling,
    ) as vrt:
        return vrt.read(bands, masked=True)


def _bounds(grid: tuple[rasterio.Affine, int, int] | None, shape: tuple[int, int]) -> list:
    if grid is None:  # CRS.Simple: y up, so rows are negative latitudes
        return [[-float(shape[0]), 0.0], [0.0, float(shape[1])]]
    transform, width, height = grid
    to_ll = pyproj.Transformer.from_crs(3857, 4326, always_xy=True)
    west, north = to_ll.transform(transform.c, transform.f)
    east, south = to_ll.transform(
        transform.c + transform.a * width, transform.f + transform.e * height
    )
    return [[south, west], [north, east]]


def change_rgba(mask: np.ndarray) -> np.ndarray:
    """0 → transparent, 1 → opaque red, 255 (and outside the scene) → a grey veil."""
    rgba = np.zeros((*mask.shape, 4), np.uint8)
    rgba[mask == 1] = CHANGE_RGBA
    rgba[mask == 255] = NODATA_RGBA
    return rgba


def _optical_rgba(
    uri: str,
    grid: tuple[rasterio.Affine, int, int] | None,
    shape: tuple[int, int],
    rgb: list[int] | None,
) -> bytes | None:
    """Natural-colour optical overlay, or None (with a warning) when the scene cannot be read."""
    try:
        with rasterio.open(uri) as src:
            bands, _ = rgb_bands(src, rgb)
            data = _read(src, bands, grid, shape, Resampling.average)
    except (rasterio.errors.RasterioIOError, OSError) as exc:
        log.warning("%s: the optical scene cannot be read, the map shows no optical (%s)", uri, exc)
        return None
    valid = ~np.ma.getmaskarray(data).any(axis=0)
    raw = data.filled(0)
    rgb_img = np.stack([stretch(b, valid) for b in raw])
    if rgb_img.shape[0] == 1:
        rgb_img = np.repeat(rgb_img, 3, axis=0)
    rgba = np.zeros((*raw.shape[1:], 4), np.uint8)
    rgba[..., :3] = np.moveaxis(np.rint(rgb_img[:3]), 0, -1).astype(np.uint8)
    rgba[..., 3] = np.where(valid, 255, 0)
    return _png(rgba)


def _polygons(out: Path, crs: CRS | None) -> dict[str, Any]:
    """The change polygons as GeoJSON: WGS84 lon/lat, or [col, -row] for plain images."""
    path = out / PRODUCT_FILES["polygons"]
    meta, table = pyogrio.read_arrow(path)
    geoms = shapely.from_wkb(table[meta["geometry_name"] or "wkb_geometry"].to_pylist())
    if crs is None:
        geoms = shapely.transform(geoms, lambda xy: xy * np.array([1.0, -1.0]))
    else:
        to_ll = pyproj.Transformer.from_crs(crs, 4326, always_xy=True)
        geoms = shapely.transform(geoms, lambda x, y: to_ll.transform(x, y), interleaved=False)
    names = [n for n in table.column_names if n not in (meta["geometry_name"], "wkb_geometry")]
    columns = {n: table[n].to_pylist() for n in names}
    features = [
        {
            "type": "Feature",
            "properties": {n: columns[n][i] for n in names},
            "geometry": json.loads(shapely.to_geojson(g)),
        }
        for i, g in enumerate(geoms)
    ]
    return {"type": "FeatureCollection", "features": features}


def summary_of(out: Path) -> dict[str, Any]:
    """The figures a responder reads first, from item.json."""
    item = json.loads((out / PRODUCT_FILES["item"]).read_text())
    props = item["properties"]
    return {
        "changed_area_m2": props.get("m2cd:changed_area_m2"),
        "changed_pixels": props.get("m2cd:changed_pixels"),
        "polygon_count": props.get("m2cd:polygon_count"),
        "min_mapping_unit_px": props.get("m2cd:min_mapping_unit_px"),
        "threshold": props.get("m2cd:threshold"),
        "model": props.get("m2cd:model_name"),
        "pre": props.get("start_datetime"),
        "post": props.get("end_datetime") or props.get("datetime"),
        "optical": props.get("m2cd:inputs", {}).get("optical"),
        "sar": props.get("m2cd:inputs", {}).get("sar"),
    }


def build_layers(out: Path, max_size: int = 2048, rgb: list[int] | None = None) -> MapLayers:
    """Render the map's layers from the products in `out` (a finished run's OUT directory).

    Raises InputError naming the missing file when OUT holds no finished products.
    """
    for key in ("mask", "polygons", "item"):
        if not (out / PRODUCT_FILES[key]).is_file():
            raise InputError(str(out), f"no {PRODUCT_FILES[key]}: not the OUT of a finished run")
    summary = summary_of(out)
    with rasterio.open(out / PRODUCT_FILES["mask"]) as mask_src:
        grid = _target_grid(mask_src, max_size)
        scale = min(1.0, max_size / max(mask_src.shape))
        shape = (max(1, round(mask_src.height * scale)), max(1, round(mask_src.width * scale)))
        mask = _read(mask_src, [1], grid, shape, Resampling.nearest).filled(255)[0]
        crs = mask_src.crs
        bounds = _bounds(grid, mask_src.shape if grid is None else shape)
    optical = summary["optical"]
    optical_png = _optical_rgba(optical, grid, shape, rgb) if optical else None
    return MapLayers(
        mode="pixel" if crs is None else "geo",
        bounds=bounds,
        change_png=_png(change_rgba(mask)),
        optical_png=optical_png,
        polygons=_polygons(out, crs),
        summary=summary,
    )
