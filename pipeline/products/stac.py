"""The run's STAC Item: where the products are, on which grid, and from which inputs and model.

Geometry and bbox are WGS84 (as STAC requires), computed from the grid's outline densified along
each edge so a projected scene's curved footprint is followed; the native grid is recorded exactly
with the projection extension (`proj:code`/`proj:wkt2`, `proj:shape`, `proj:transform`). Asset hrefs
are relative to the item, so the whole prefix can be moved or copied (staging → final, local → S3);
the one exception is the model asset (`mlm:model` role), which points at the weights where the run
loaded them (the shipped checkpoint inside the package, or the user's, redacted).

Extensions (EXTENSIONS): projection v2.0.0, file v2.1.0 (size and multihash SHA-256 of every
file asset), classification v2.0.0 (the mask's classes, colours = the COG's palette), processing
v1.1.0 (lineage, software) and MLM v1.4.0 (the model, from its checkpoint: `model_info`).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from datetime import datetime
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

from pipeline.products.cog import MASK_CLASSES as MASK_CLASS_NAMES
from pipeline.products.cog import MASK_COLORS
from pipeline.products.metadata import ProductMetadata
from pipeline.products.model_info import InputInfo, ModelInfo


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
    "routing_optical": AssetSpec(
        "./routing_optical.tif",
        pystac.MediaType.COG,
        ("metadata", "diagnostics"),
        "Top-1 MoE expert of the optical tokens, one band per stage (255 nodata)",
    ),
    "routing_sar": AssetSpec(
        "./routing_sar.tif",
        pystac.MediaType.COG,
        ("metadata", "diagnostics"),
        "Top-1 MoE expert of the SAR tokens, one band per stage (255 nodata)",
    ),
}

FILE_EXTENSION = "https://stac-extensions.github.io/file/v2.1.0/schema.json"
CLASSIFICATION_EXTENSION = "https://stac-extensions.github.io/classification/v2.0.0/schema.json"
PROCESSING_EXTENSION = "https://stac-extensions.github.io/processing/v1.1.0/schema.json"
PROJECTION_EXTENSION = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
MLM_EXTENSION = "https://stac-extensions.github.io/mlm/v1.4.0/schema.json"
MODEL_ASSET = "model"
_MASK_NOTES = {255: "no valid input in one scene or the other"}


def _class(value: int) -> dict[str, Any]:
    """A classification v2 Class Object for a mask value; colour = the COG palette's entry."""
    label = MASK_CLASS_NAMES[value]
    red, green, blue, _ = MASK_COLORS[value]
    entry: dict[str, Any] = {
        "value": value,
        "name": label.replace(" ", "_"),
        "title": label,
        "description": _MASK_NOTES.get(value, label),
        "color_hint": f"{red:02X}{green:02X}{blue:02X}",
    }
    if value == 255:
        entry["nodata"] = True
    return entry


# The mask's classes (classification extension): the values of change_mask.tif and `mask`.
MASK_CLASSES = [_class(v) for v in sorted(MASK_CLASS_NAMES)]
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


def item_times(
    pre: datetime | None, post: datetime | None, created: datetime
) -> tuple[datetime, datetime | None, datetime | None]:
    """(datetime, start_datetime, end_datetime) of the Item from the acquisition times.

    The acquisitions span the change: with both known, start/end are the earlier/later one and
    `datetime` the post-event one. An unknown date (a run may not know it) leaves no interval,
    and `datetime` falls back to the known one, else the creation time (the one time STAC can be
    given then).
    """
    dates = [d for d in (pre, post) if d is not None]
    when = post or (dates[0] if dates else created)
    if len(dates) == 2:
        return when, min(dates), max(dates)
    return when, None, None


def build_item(
    meta: ProductMetadata, assets: dict[str, Path | None], summary: ChangeSummary
) -> pystac.Item:
    """A STAC Item for the products named in `assets` (keys of ASSETS → local file, if any).

    The acquisition times are `meta.optical_datetime` (pre) and `meta.sar_datetime` (post);
    the model is described from `meta.model` (MLM fields and a model asset) when it is set.
    """
    geometry, bbox = footprint_wgs84(meta)
    when, start, end = item_times(meta.optical_datetime, meta.sar_datetime, meta.created)
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
    item = pystac.Item(
        id=item_id(meta.run_key),
        geometry=geometry,
        bbox=bbox,
        datetime=when,
        start_datetime=start,
        end_datetime=end,
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
    if meta.model is not None:
        _add_model(item, meta.model)
    return item


def _add_model(item: pystac.Item, info: ModelInfo) -> None:
    """The MLM fields (Item properties) and the model asset of the run's model."""
    optical, sar = info.inputs
    item.properties.update(
        {
            "mlm:name": info.name,
            "mlm:architecture": info.architecture,
            "mlm:tasks": ["semantic-segmentation", "change-detection"],
            "mlm:framework": info.framework,
            "mlm:framework_version": info.framework_version,
            "mlm:total_parameters": info.total_parameters,
            "mlm:pretrained": info.pretrained_source is not None,
            "mlm:pretrained_source": info.pretrained_source,
            "mlm:batch_size_suggestion": info.batch_size,
            # PyTorch runs it on a CPU or a CUDA GPU alike: no accelerator is required
            "mlm:accelerator": None,
            "mlm:accelerator_constrained": False,
            "mlm:accelerator_summary": (
                "PyTorch on CPU or an NVIDIA GPU (CUDA); this run: inference.device="
                f"{info.device}, precision={info.precision}"
            ),
            "mlm:input": [_mlm_input(optical), _mlm_input(sar)],
            "mlm:output": [_mlm_output(info)],
            "mlm:hyperparameters": {
                "threshold": info.threshold,
                "threshold_source": info.threshold_source,
                "tile": info.tile,
                "overlap": info.overlap,
                "tta": info.tta,
            },
            "m2cd:model_config": info.config_name,
            "m2cd:model_trained": info.trained,
        }
    )
    if info.training_data is not None:
        item.properties["m2cd:training_data"] = info.training_data
    weights = info.weights
    extra: dict[str, Any] = {
        "mlm:artifact_type": weights.artifact_type,
        "bands": [{"name": band} for band in (*optical.bands, *sar.bands)],
        "m2cd:model_digest": info.digest,
    }
    if weights.size is not None:
        extra["file:size"] = weights.size
    if weights.sha256 is not None:
        extra["file:checksum"] = "1220" + weights.sha256
    roles = ["mlm:model", "mlm:weights", "model", "weights"] if info.trained else None
    item.add_asset(
        MODEL_ASSET,
        pystac.Asset(
            href=weights.href,
            media_type=weights.media_type,
            roles=roles or ["mlm:model", "model", "metadata"],
            title=weights.title,
            extra_fields=extra,
        ),
    )
    item.stac_extensions.append(MLM_EXTENSION)


def _mlm_input(spec: InputInfo) -> dict[str, Any]:
    return {
        "name": spec.name,
        "bands": list(spec.bands),
        "input": {
            # any tile size: the network pads to its multiple of 32 and crops back
            "shape": [-1, spec.channels, -1, -1],
            "dim_order": ["batch", "channel", "height", "width"],
            "data_type": "float32",
        },
        "description": spec.description,
        "value_scaling": [{"type": "z-score", "mean": spec.mean, "stddev": spec.stddev}],
        "resize_type": None,
        "pre_processing_function": {"format": "python", "expression": spec.pre_processing},
    }


def _mlm_output(info: ModelInfo) -> dict[str, Any]:
    classes = [c for c in MASK_CLASSES if not c.get("nodata")]  # the mask adds nodata itself
    return {
        "name": "change logits",
        "tasks": ["semantic-segmentation", "change-detection"],
        "result": {
            "shape": [-1, info.num_classes, -1, -1],
            "dim_order": ["batch", "class", "height", "width"],
            "data_type": "float32",
        },
        "description": (
            f"Per-pixel logits of {info.num_classes} classes; softmax class 1 is "
            "change_prob.tif, change where it is >= the threshold "
            f"{info.threshold} ({info.threshold_source}): change_mask.tif"
        ),
        "classification:classes": classes,
        "post_processing_function": None,
    }


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
