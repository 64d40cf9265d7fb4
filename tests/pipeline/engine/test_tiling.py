"""The global tile grid, blocks and blend window: exact coverage, no shifting, grid-only weights."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.engine.tiling import TileGrid, plan_blocks, tiles_needed, weight_window
from pipeline.geometry import PixelBox


@pytest.mark.parametrize(
    ("h", "w", "tile", "overlap"),
    [(300, 410, 64, 16), (50, 37, 64, 16), (64, 64, 64, 0), (1000, 257, 256, 64), (129, 65, 32, 8)],
)
def test_tiles_cover_the_scene_exactly_from_the_origin(h, w, tile, overlap):
    grid = TileGrid(height=h, width=w, tile=tile, overlap=overlap)
    cover = np.zeros((h, w), dtype=int)
    for i in range(grid.rows):
        for j in range(grid.cols):
            ext = grid.extent(i, j)
            assert (ext.y0, ext.x0) == (i * grid.stride, j * grid.stride)  # never shifted inwards
            assert (ext.height, ext.width) == (tile, tile)  # edge tiles keep full size (padded)
            inner = ext.intersect(PixelBox(0, h, 0, w))
            cover[inner.y0 : inner.y1, inner.x0 : inner.x1] += 1
    assert cover.min() >= 1
    # no superfluous tile: dropping the last row/column would leave pixels uncovered
    assert (grid.rows - 1) * grid.stride < h and (grid.cols - 1) * grid.stride < w
    if h > tile:
        assert (grid.rows - 2) * grid.stride + tile < h


def test_scene_smaller_than_a_tile_has_one_padded_tile():
    grid = TileGrid(height=20, width=30, tile=64, overlap=16)
    assert (grid.rows, grid.cols) == (1, 1)
    assert grid.overlap_overhead() == pytest.approx(64 * 64 / 600)
    assert tiles_needed(64, 64, 48) == 1 and tiles_needed(65, 64, 48) == 2


def _brute_tiles(grid: TileGrid, region: PixelBox) -> list[tuple[int, int]]:
    return [
        (i, j)
        for i in range(grid.rows)
        for j in range(grid.cols)
        if grid.extent(i, j).intersect(region) is not None
    ]


@pytest.mark.parametrize("block", [64, 100, 128, 512])
def test_blocks_partition_the_scene_and_list_every_touching_tile(block):
    grid = TileGrid(height=300, width=410, tile=64, overlap=16)
    blocks = plan_blocks(grid, block)
    owner = np.full((300, 410), -1)
    for b in blocks:
        assert (owner[b.y0 : b.y1, b.x0 : b.x1] == -1).all()
        owner[b.y0 : b.y1, b.x0 : b.x1] = b.id
        assert b.y0 % block == 0 and b.x0 % block == 0  # aligned with the Zarr chunks
        tiles = list(grid.tiles_for(b.core))
        assert tiles == _brute_tiles(grid, b.core)  # same set, global row-major order
        assert b.tiles == len(tiles)
    assert (owner >= 0).all()
    assert [b.id for b in blocks] == list(range(len(blocks)))


@pytest.mark.parametrize(("tile", "overlap"), [(64, 16), (256, 64), (32, 0), (96, 40)])
def test_weight_window_is_positive_and_sums_to_one_across_overlaps(tile, overlap):
    w = weight_window(tile, overlap)
    assert w.dtype == np.float32 and w.shape == (tile, tile)
    assert (w > 0).all()
    assert np.allclose(w, w.T) and np.allclose(w, w[::-1, ::-1])
    ramp = w[tile // 2].astype(np.float64)
    stride = tile - overlap
    if overlap:
        # in the shared strip, the ramp of one tile and its neighbour's add up to the flat core
        shared = ramp[stride:] + ramp[:overlap]
        assert np.allclose(shared, ramp[tile // 2], rtol=1e-5)
    with pytest.raises(ValueError):
        w[0, 0] = 2.0  # cached and shared: read-only
