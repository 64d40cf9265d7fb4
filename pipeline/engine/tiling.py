"""The global tile grid, the blocks that group it, and the blend weight window.

Everything here depends only on the scene shape and the tiling config, never on which block or
worker asks: that is what makes products byte-identical across block sizes, workers and resume.
Tile origins sit at k·stride from the scene origin; edge tiles reach past the scene (read
boundless, the padding is never valid) instead of being shifted inwards, so no pixel is counted twice.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from functools import lru_cache

import numpy as np
from pydantic import BaseModel, ConfigDict

from pipeline.geometry import PixelBox


def tiles_needed(length: int, tile: int, stride: int) -> int:
    """How many tiles at k·stride cover [0, length) exactly (the last may reach past the end)."""
    if length <= tile:
        return 1
    return math.ceil((length - tile) / stride) + 1


class TileGrid(BaseModel):
    """The tile grid of one scene: tile origins at (i·stride, j·stride), row-major order."""

    model_config = ConfigDict(frozen=True)

    height: int
    width: int
    tile: int
    overlap: int

    @property
    def stride(self) -> int:
        """Distance between tile origins: tile minus overlap."""
        return self.tile - self.overlap

    @property
    def rows(self) -> int:
        """Tile rows that cover the scene height (the last may reach past it)."""
        return tiles_needed(self.height, self.tile, self.stride)

    @property
    def cols(self) -> int:
        """Tile columns that cover the scene width (the last may reach past it)."""
        return tiles_needed(self.width, self.tile, self.stride)

    @property
    def count(self) -> int:
        """Tiles in the scene (what a plan reports and the progress bar counts)."""
        return self.rows * self.cols

    def extent(self, i: int, j: int) -> PixelBox:
        """The pixel box of tile (i, j): never shifted inwards at the edges."""
        y0, x0 = i * self.stride, j * self.stride
        return PixelBox(y0, y0 + self.tile, x0, x0 + self.tile)

    def _index_range(self, lo: int, hi: int, n: int) -> range:
        """Tile indexes k whose span [k·s, k·s + tile) intersects [lo, hi)."""
        first = max(0, math.floor((lo - self.tile) / self.stride) + 1)
        last = min(n - 1, (hi - 1) // self.stride)
        return range(first, last + 1)

    def tile_rows_for(self, region: PixelBox) -> range:
        """Tile rows whose tiles touch `region` (a block core and its halo)."""
        return self._index_range(region.y0, region.y1, self.rows)

    def tile_cols_for(self, region: PixelBox) -> range:
        """Tile columns whose tiles touch `region`."""
        return self._index_range(region.x0, region.x1, self.cols)

    def tiles_for(self, region: PixelBox) -> Iterator[tuple[int, int]]:
        """Every tile intersecting `region`, in global row-major order (the blend order)."""
        cols = self.tile_cols_for(region)
        for i in self.tile_rows_for(region):
            for j in cols:
                yield i, j

    def overlap_overhead(self) -> float:
        """Pixels pushed through the model per scene pixel (≥ 1), from overlap and edge padding."""
        return self.count * self.tile * self.tile / (self.height * self.width)


class BlockSpec(BaseModel):
    """One block: a `block`×`block` core (clipped to the scene) = one output Zarr chunk."""

    model_config = ConfigDict(frozen=True)

    id: int
    row: int
    col: int
    y0: int
    x0: int
    y1: int
    x1: int
    tiles: int

    @property
    def core(self) -> PixelBox:
        """The pixels this block writes (tiles reaching outside only contribute to them)."""
        return PixelBox(self.y0, self.y1, self.x0, self.x1)

    @property
    def name(self) -> str:
        """`RRRRR_CCCCC`: the marker's file name, sortable in block order."""
        return f"{self.row:05d}_{self.col:05d}"


def plan_blocks(grid: TileGrid, block: int) -> list[BlockSpec]:
    """Blocks anchored at the scene origin, row-major, with the number of tiles each runs."""
    out: list[BlockSpec] = []
    n_rows, n_cols = math.ceil(grid.height / block), math.ceil(grid.width / block)
    for r in range(n_rows):
        for c in range(n_cols):
            core = PixelBox(
                r * block,
                min((r + 1) * block, grid.height),
                c * block,
                min((c + 1) * block, grid.width),
            )
            n = len(grid.tile_rows_for(core)) * len(grid.tile_cols_for(core))
            out.append(
                BlockSpec(
                    id=len(out),
                    row=r,
                    col=c,
                    y0=core.y0,
                    x0=core.x0,
                    y1=core.y1,
                    x1=core.x1,
                    tiles=n,
                )
            )
    return out


@lru_cache(maxsize=8)
def _weight_window(tile: int, overlap: int) -> np.ndarray:
    if overlap == 0:
        ramp = np.ones(tile, dtype=np.float64)
    else:
        i = np.arange(tile, dtype=np.float64)
        u = np.clip(np.minimum(i + 0.5, tile - i - 0.5) / overlap, 0.0, 1.0)
        ramp = np.sin(0.5 * np.pi * u) ** 2
    w = np.outer(ramp, ramp).astype(np.float32)
    w.setflags(write=False)
    return w


def weight_window(tile: int, overlap: int) -> np.ndarray:
    """Separable sin² ramp over the overlap with a flat core, strictly positive (read-only).

    Neighbouring tiles' ramps sum to one across their shared `overlap` pixels (sin² + cos² = 1),
    so probabilities cross-fade instead of jumping at a tile border, and the few edge pixels a
    model sees with padding get almost no weight; every covered pixel still has weight > 0.
    """
    return _weight_window(tile, overlap)
