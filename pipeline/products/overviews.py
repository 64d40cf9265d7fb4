"""Overviews (multiscales) inside `change.zarr`, copied from the finished COGs' overview levels.

The COGs already hold GDAL-built overviews (average for the probability, nearest for the mask),
so the store's levels are the same pixels a GIS shows from the COGs, read one chunk at a time
(memory bounded by a chunk, whatever the scene size). Layout (zarr-conventions `multiscales`):

    change.zarr/                 full resolution: probability, mask, valid (the engine's arrays)
    change.zarr/overviews/       `multiscales` layout, `spatial:`/`proj:` conventions
    change.zarr/overviews/1/     probability, mask at 1/2 (COG overview 0), its own spatial: grid
    change.zarr/overviews/2/     ... 1/4, and so on until the level fits in one COG tile

They live in a child group because the `spatial:` convention forbids `spatial:transform` beside a
`multiscales` layout, and the root keeps its full-resolution grid for every plain reader.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import zarr
from affine import Affine
from rasterio.windows import Window

from pipeline.io.storage import zarr_store
from pipeline.products.zarr_store import (
    MASK,
    MASK_FLAGS,
    MASK_NODATA,
    MULTISCALES_CONVENTION,
    PROBABILITY,
    consolidate,
    consolidating,
    geozarr_attrs,
    grid_conventions,
    proj_attrs,
)

OVERVIEWS = "overviews"
RESAMPLING = {PROBABILITY: "average", MASK: "nearest"}  # the COGs' overview resampling


def _level_arrays(
    group: zarr.Group, shape: tuple[int, int], chunk: tuple[int, int]
) -> dict[str, zarr.Array]:
    ch, cw = min(chunk[0], shape[0]), min(chunk[1], shape[1])
    prob = group.create_array(
        PROBABILITY,
        shape=shape,
        dtype="float32",
        chunks=(ch, cw),
        fill_value=np.nan,
        dimension_names=("y", "x"),
        attributes={
            "long_name": "change probability",
            "units": "1",
            "resampling_method": RESAMPLING[PROBABILITY],
        },
    )
    mask = group.create_array(
        MASK,
        shape=shape,
        dtype="uint8",
        chunks=(ch, cw),
        fill_value=MASK_NODATA,
        dimension_names=("y", "x"),
        attributes={
            "long_name": "change mask",
            **MASK_FLAGS,
            "resampling_method": RESAMPLING[MASK],
        },
    )
    return {PROBABILITY: prob, MASK: mask}


def _copy_level(src: Path, level: int, dst: zarr.Array) -> None:
    """Copy one COG overview level into a Zarr array, chunk by chunk."""
    with rasterio.open(src, overview_level=level) as ds:
        ch, cw = dst.chunks
        h, w = dst.shape
        for r0 in range(0, h, ch):
            for c0 in range(0, w, cw):
                win = Window(c0, r0, min(cw, w - c0), min(ch, h - r0))
                dst[r0 : r0 + win.height, c0 : c0 + win.width] = ds.read(1, window=win)


def write_overviews(
    store_uri: str,
    cogs: dict[str, Path],
    crs_wkt: str | None,
    chunk: tuple[int, int],
) -> list[dict[str, Any]]:
    """Add `overviews/<k>` levels from the COGs (`{"probability": tif, "mask": tif}`) to the store.

    Returns the multiscales layout written; the root's consolidated metadata is rewritten last.
    """
    store = zarr_store(store_uri)
    root = zarr.open_group(store, mode="r+", zarr_format=3)
    with rasterio.open(cogs[MASK]) as base:
        levels = len(base.overviews(1))
        base_transform, (base_h, base_w) = base.transform, base.shape
    with consolidating():
        if OVERVIEWS in root:
            del root[OVERVIEWS]  # a resumed finalize rewrites them whole
        parent = root.create_group(OVERVIEWS)
        layout: list[dict[str, Any]] = []
        for level in range(levels):
            with rasterio.open(cogs[MASK], overview_level=level) as ov:
                shape = ov.shape
            # as GDAL georeferences an overview (its own transform is undefined for plain images)
            factors = (base_h / shape[0], base_w / shape[1])
            transform = tuple(base_transform @ Affine.scale(factors[1], factors[0]))[:6]
            name = str(level + 1)
            group = parent.create_group(name, attributes=geozarr_attrs(crs_wkt, transform, shape))
            for key, arr in _level_arrays(group, shape, chunk).items():
                _copy_level(cogs[key], level, arr)
            item: dict[str, Any] = {"asset": name, "transform": {"scale": list(factors)}}
            if layout:  # relative to the level above it; level 1 is relative to the root
                above = layout[-1]["spatial:shape"]
                item["derived_from"] = layout[-1]["asset"]
                item["transform"] = {"scale": [above[0] / shape[0], above[1] / shape[1]]}
            item |= {
                "spatial:shape": [int(shape[0]), int(shape[1])],
                "spatial:transform": [float(v) for v in transform],
            }
            layout.append(item)
        conventions = [MULTISCALES_CONVENTION, *grid_conventions(crs_wkt)]
        parent.attrs.update(
            {
                "zarr_conventions": conventions,
                "spatial:dimensions": ["y", "x"],
                **proj_attrs(crs_wkt),
                "multiscales": {"layout": layout, "resampling_method": RESAMPLING[PROBABILITY]},
            }
        )
    consolidate(store)
    return layout
