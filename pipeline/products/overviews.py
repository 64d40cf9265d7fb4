"""Overviews (multiscales) inside `change.zarr`: the COGs' own overview pixels, tile by tile.

The COG writers halve each finished tile into the level above (average for the probability, nearest
for the mask); every overview tile they complete is also written here as one Zarr chunk (chunks =
the COG tile), from the encoding threads, so the store's levels are the same pixels a GIS shows
from the COGs without decoding the COGs again (that re-read was 1.3 s of 6 s finalize at 8192²).
Layout (zarr-conventions `multiscales`):

    change.zarr/                 full resolution: probability, mask, valid (the engine's arrays)
    change.zarr/overviews/       `multiscales` layout, `spatial:`/`proj:` conventions
    change.zarr/overviews/1/     probability, mask at 1/2 (COG overview 0), its own spatial: grid
    change.zarr/overviews/2/     ... 1/4, and so on until the level fits in one COG tile

They live in a child group because the `spatial:` convention forbids `spatial:transform` beside a
`multiscales` layout, and the root keeps its full-resolution grid for every plain reader.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any

import numpy as np
import zarr
from affine import Affine

from pipeline.io.storage import zarr_store
from pipeline.products.cog_writer import overview_shapes
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


class OverviewStore:
    """Context manager: `overviews/<k>` groups created on entry, filled through `sink(layer)`,
    their `multiscales` layout and the root's consolidated metadata written on a clean exit."""

    def __init__(
        self,
        store_uri: str,
        shape: tuple[int, int],
        transform: Affine,
        crs_wkt: str | None,
        blocksize: int,
    ):
        self._store = zarr_store(store_uri)
        self._crs = crs_wkt
        self._tile = blocksize
        self._shape = shape
        self._transform = transform
        self._levels: list[dict[str, zarr.Array]] = []
        self.layout: list[dict[str, Any]] = []

    def __enter__(self) -> OverviewStore:
        # the store as it is, not its consolidated metadata: a pass killed midway left an
        # `overviews/` group that the metadata (rewritten only on a clean exit) does not list
        root = zarr.open_group(self._store, mode="r+", zarr_format=3, use_consolidated=False)
        base_h, base_w = self._shape
        with consolidating():
            if OVERVIEWS in root:
                del root[OVERVIEWS]  # a resumed finalize rewrites them whole
            self._parent = root.create_group(OVERVIEWS)
            for k, shape in enumerate(overview_shapes(self._shape, self._tile)):
                # as GDAL georeferences an overview (its own transform is undefined for plain images)
                factors = (base_h / shape[0], base_w / shape[1])
                transform = tuple(self._transform @ Affine.scale(factors[1], factors[0]))[:6]
                name = str(k + 1)
                attrs = geozarr_attrs(self._crs, transform, shape)
                group = self._parent.create_group(name, attributes=attrs)
                self._levels.append(_level_arrays(group, shape, (self._tile, self._tile)))
                item: dict[str, Any] = {"asset": name, "transform": {"scale": list(factors)}}
                if self.layout:  # relative to the level above it; level 1 is relative to the root
                    above = self.layout[-1]["spatial:shape"]
                    item["derived_from"] = self.layout[-1]["asset"]
                    item["transform"] = {"scale": [above[0] / shape[0], above[1] / shape[1]]}
                item |= {
                    "spatial:shape": [int(shape[0]), int(shape[1])],
                    "spatial:transform": [float(v) for v in transform],
                }
                self.layout.append(item)
        return self

    def sink(self, layer: str) -> Callable[[int, int, int, np.ndarray], None]:
        """`(level, i, j, pixels)` → chunk (i, j) of `overviews/<level>/<layer>` (level ≥ 1).
        Called from the encoding threads: each call writes its own chunk, so no lock is needed."""

        def write(level: int, i: int, j: int, pixels: np.ndarray) -> None:
            t = self._tile
            h, w = pixels.shape
            self._levels[level - 1][layer][i * t : i * t + h, j * t : j * t + w] = pixels

        return write

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            return
        conventions = [MULTISCALES_CONVENTION, *grid_conventions(self._crs)]
        with consolidating():
            self._parent.attrs.update(
                {
                    "zarr_conventions": conventions,
                    "spatial:dimensions": ["y", "x"],
                    **proj_attrs(self._crs),
                    "multiscales": {
                        "layout": self.layout,
                        "resampling_method": RESAMPLING[PROBABILITY],
                    },
                }
            )
        consolidate(self._store)
