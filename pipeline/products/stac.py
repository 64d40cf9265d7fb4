"""The run's STAC Item: where the products are, on which grid, and from which inputs and model.

Geometry and bbox are WGS84 (as STAC requires), computed from the grid's outline densified along
each edge so a projected scene's curved footprint is followed; the native grid is recorded exactly
with the projection extension (`proj:code`/`proj:wkt2`, `proj:shape`, `proj:transform`). Asset hrefs
are relative to the item, so the whole prefix can be moved or copied (staging → final, local → S3).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import pyproj
import pystac
import shapely
from pystac.extensions.projection import ProjectionExtension
from shapely.geometry import mapping
from shapely.geometry.polygon import orient

from pipeline.products.metadata import ProductMetadata


@dataclass(frozen=True)
class AssetSpec:
    """One STAC asset of the products: its file, media type, roles and title, written as STAC
    expects them."""

    href: str  # relative to item.json, e.g. ./change_prob.tif
    media_type: str
    roles: tuple[str, ...]
    title: str


ASSETS: dict[str, AssetSpec] = {
    "zarr": AssetSpec("./change.zarr", "application/vnd.zarr", ("data",), "Change store (Zarr v3)"),
    "probability": AssetSpec(
        "./change_prob.tif",
        pystac.MediaType.COG,
        ("data",),
        "Change probability (float32, NaN nodata)",
    ),
    "mask": AssetSpec(
        "./change_mask.tif", pystac.MediaType.COG, ("data",), "Change mask (1 change, 255 nodata)"
    ),
    "polygons": AssetSpec(
        "./change.geojson", pystac.MediaType.GEOJSON, ("data",), "Change polygons (scene CRS)"
    ),
    "polygons_wgs84": AssetSpec(
        "./change_wgs84.geojson",
        pystac.MediaType.GEOJSON,
        ("data",),
        "Change polygons (WGS84 lon/lat, RFC 7946)",
    ),
    "polygons_parquet": AssetSpec(
        "./change.parquet",
        "application/vnd.apache.parquet",
        ("data",),
        "Change polygons (GeoParquet 1.1, scene CRS)",
    ),
    "polygons_fgb": AssetSpec(
        "./change.fgb",
        "application/vnd.flatgeobuf",
        ("data",),
        "Change polygons (FlatGeobuf with spatial index, scene CRS)",
    ),
    "quicklook": AssetSpec(
        "./quicklook.png",
        pystac.MediaType.PNG,
        ("overview", "visual"),
        "Optical in natural colour with change in red, legend and scale bar",
    ),
    "quicklook_panel": AssetSpec(
        "./quicklook_panel.png",
        pystac.MediaType.PNG,
        ("overview",),
        "Pre (optical) | post (SAR) | change",
    ),
}

FILE_EXTENSION = "https://stac-extensions.github.io/file/v2.1.0/schema.json"
CLASSIFICATION_EXTENSION = "https://stac-extensions.github.io/classification/v2.0.0/schema.json"
PROCESSING_EXTENSION = "https://stac-extensions.github.io/processing/v1.1.0/schema.json"
# The mask's classes (classification extension): the values of change_mask.tif and `mask`.
MASK_CLASSES = [
    {"value": 0, "name": "no_change", "description": "no change", "color_hint": "FFFFFF"},
    {"value": 1, "name": "change", "description": "change", "color_hint": "E61919"},
    {
        "value": 255,
        "name": "nodata",
        "description": "no valid input in one scene or the other",
        "color_hint": "808080",
        "nodata": True,
    },
]
SOFTWARE = "m2cd-pipeline"


@dataclass(frozen=True)
class ChangeSummary:
    """Totals over the whole change (before the minimum mapping unit) and the features kept."""

    changed_px: int
    changed_m2: float | None
    polygon_count: int
    min_mapping_unit_px: int
    threshold: float | None = None


def item_id(run_key: str) -> str:
    """A URL- and filename-safe id derived from the run key."""
    return "m2cd-" + re.sub(r"[^A-Za-z0-9._-]+", "-", run_key).strip("-")


def outline_px(shape: tuple[int, int], per_edge: int = 16) -> np.ndarray:
    """Closed ring of pixel-corner coordinates (col, row) around the grid, `per_edge` steps a side."""
    height, width = shape
    t = np.linspace(0, 1, per_edge, endpoint=False)
    top = np.stack([t * width, np.zeros_like(t)], 1)
    right = np.stack([np.full_like(t, width), t * height], 1)
    bottom = np.stack([(1 - t) * width, np.full_like(t, height)], 1)
    left = np.stack([np.zeros_like(t), (1 - t) * height], 1)
    ring = np.concatenate([top, right, bottom, left])
    return np.concatenate([ring, ring[:1]])


def footprint_wgs84(meta: ProductMetadata) -> tuple[dict[str, Any] | None, list[float] | None]:
    """GeoJSON polygon and bbox in WGS84 lon/lat, or (None, None) for plain images."""
    if meta.crs is None:
        return None, None
    ring = outline_px(meta.shape)
    xs, ys = meta.to_crs(ring[:, 0], ring[:, 1])
    to_wgs84 = pyproj.Transformer.from_crs(
        pyproj.CRS.from_wkt(meta.crs), pyproj.CRS.from_epsg(4326), always_xy=True
    )
    lon, lat = to_wgs84.transform(np.asarray(xs), np.asarray(ys))
    poly = orient(shapely.Polygon(np.stack([lon, lat], 1).round(9)), sign=1.0)
    # bbox rounded outwards from the exact coordinates, so it always covers the grid.
    west, south, east, north = (
        float(lon.min()),
        float(lat.min()),
        float(lon.max()),
        float(lat.max()),
    )
    bbox = [_down(west), _down(south), _up(east), _up(north)]
    return mapping(poly), bbox


def _down(v: float, digits: int = 9) -> float:
    return math.floor(v * 10**digits) / 10**digits


def _up(v: float, digits: int = 9) -> float:
    return math.ceil(v * 10**digits) / 10**digits


def native_bbox(meta: ProductMetadata) -> list[float]:
    """The scene's bounding box in its own CRS (`proj:bbox`), from the four grid corners."""
    height, width = meta.shape
    xs, ys = meta.to_crs(np.array([0, width, width, 0]), np.array([0, 0, height, height]))
    return [float(min(xs)), float(min(ys)), float(max(xs)), float(max(ys))]


def _add_projection(item: pystac.Item, meta: ProductMetadata) -> None:
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    proj.shape = list(meta.shape)
    proj.transform = list(meta.transform)
    if meta.crs is None:
        item.properties["proj:code"] = None  # the extension's way of saying "no CRS"
        return
    crs = pyproj.CRS.from_wkt(meta.crs)
    authority = crs.to_authority()
    proj.code = f"{authority[0]}:{authority[1]}" if authority else None
    proj.wkt2 = crs.to_wkt()
    proj.bbox = native_bbox(meta)


def build_item(
    meta: ProductMetadata, assets: dict[str, Path | None], summary: ChangeSummary
) -> pystac.Item:
    """A STAC Item for the products named in `assets` (keys of ASSETS → local file, if any)."""
    geometry, bbox = footprint_wgs84(meta)
    dates = [d for d in (meta.optical_datetime, meta.sar_datetime) if d is not None]
    properties: dict[str, Any] = {
        "created": meta.created.isoformat(),
        "m2cd:inputs": {"optical": meta.optical_uri, "sar": meta.sar_uri},
        "m2cd:model_name": meta.model_name,
        "m2cd:model_digest": meta.model_digest,
        "m2cd:config_hash": meta.config_hash,
        "m2cd:run_key": meta.run_key,
        "m2cd:resampling": meta.resampling,
        "m2cd:sar_units": meta.sar_units,
        "m2cd:changed_pixels": summary.changed_px,
        "m2cd:changed_area_m2": summary.changed_m2,
        "m2cd:polygon_count": summary.polygon_count,
        "m2cd:min_mapping_unit_px": summary.min_mapping_unit_px,
        "m2cd:optical_bands": meta.optical_bands,
        "processing:lineage": (
            f"M2CD change detection, {meta.model_name} ({meta.model_digest}), on the optical grid"
            + (f"; SAR resampled with {meta.resampling}" if meta.resampling else "")
        ),
        "processing:software": {SOFTWARE: _software_version()},
    }
    if summary.threshold is not None:
        properties["m2cd:threshold"] = summary.threshold
    # The acquisitions span the change; unknown dates (the run may not know them) fall back to
    # the creation time, the one time STAC can be given then.
    item = pystac.Item(
        id=item_id(meta.run_key),
        geometry=geometry,
        bbox=bbox,
        datetime=meta.sar_datetime or (dates[0] if dates else meta.created),
        start_datetime=min(dates) if len(dates) == 2 else None,
        end_datetime=max(dates) if len(dates) == 2 else None,
        properties=properties,
    )
    _add_projection(item, meta)
    _add_inputs(item, meta)
    for key, path in assets.items():
        spec = ASSETS[key]
        extra = file_fields(path)
        if key == "mask":
            extra["classification:classes"] = MASK_CLASSES
        item.add_asset(
            key,
            pystac.Asset(
                href=spec.href,
                media_type=spec.media_type,
                roles=list(spec.roles),
                title=spec.title,
                extra_fields=extra,
            ),
        )
    item.stac_extensions += [FILE_EXTENSION, CLASSIFICATION_EXTENSION, PROCESSING_EXTENSION]
    return item


def file_fields(path: Path | None) -> dict[str, Any]:
    """file:size and file:checksum (multihash: 0x12 = SHA2-256, 0x20 = 32 bytes) of a file."""
    if path is None:
        return {}
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return {"file:size": path.stat().st_size, "file:checksum": "1220" + digest.hexdigest()}


def _software_version() -> str:

    try:
        return version(SOFTWARE)
    except PackageNotFoundError:  # a source checkout without an install
        return "unknown"


def _add_inputs(item: pystac.Item, meta: ProductMetadata) -> None:
    """`derived_from` links to the two scenes (redacted URIs, as in m2cd:inputs)."""
    for uri, title in (
        (meta.optical_uri, "pre-event optical scene"),
        (meta.sar_uri, "post-event SAR scene"),
    ):
        item.add_link(
            pystac.Link(pystac.RelType.DERIVED_FROM, uri, pystac.MediaType.GEOTIFF, title=title)
        )


def write_item(item: pystac.Item, dst: Path) -> Path:
    """item.json with relative hrefs and no self link (the prefix may move after writing)."""
    data = item.to_dict(include_self_link=False, transform_hrefs=False)
    dst.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return dst
