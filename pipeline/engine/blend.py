"""One block through the model: tile strips read, batched, predicted and blended into the core.

The main thread blends probabilities into the block core in global row-major tile order, so every
pixel sums the same terms in the same order whatever the block size: products are byte-identical
across block sizes, worker counts and resume.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from pipeline.engine.pair import PairReader
from pipeline.engine.read_ahead import read_ahead
from pipeline.engine.tiling import TileGrid, weight_window
from pipeline.geometry import PixelBox


@dataclass
class Batch:
    """Tiles (row, column in the tile grid) and their stacked inputs, in global row-major order."""

    tiles: list[tuple[int, int]]
    optical: np.ndarray
    sar: np.ndarray


@dataclass
class BlockOutput:
    """A block core's products and counts (probability NaN / mask 255 where not valid)."""

    probability: np.ndarray
    mask: np.ndarray
    valid: np.ndarray
    tiles_run: int
    tiles_skipped: int

    @property
    def valid_px(self) -> int:
        """Pixels with a prediction (valid in both scenes and covered by a tile)."""
        return int(self.valid.sum())

    @property
    def changed_px(self) -> int:
        """Pixels predicted as change."""
        return int((self.mask == 1).sum())


def _iter_batches(
    grid: TileGrid,
    core: PixelBox,
    read_pair: PairReader,
    batch_size: int,
    min_valid_fraction: float,
    core_valid: np.ndarray,
    skipped: list[int],
) -> Iterator[Batch]:
    """Reads one tile row strip at a time; yields full batches of tiles that have valid pixels."""
    cols = grid.tile_cols_for(core)
    tile = grid.tile
    min_valid = max(1, int(np.ceil(min_valid_fraction * tile * tile)))
    pending: list[tuple[tuple[int, int], np.ndarray, np.ndarray]] = []

    def flush() -> Batch:
        batch = Batch(
            tiles=[t for t, _, _ in pending],
            optical=np.stack([o for _, o, _ in pending]),
            sar=np.stack([s for _, _, s in pending]),
        )
        pending.clear()
        return batch

    for i in grid.tile_rows_for(core):
        first, last = grid.extent(i, cols[0]), grid.extent(i, cols[-1])
        strip = PixelBox(first.y0, first.y1, first.x0, last.x1)
        optical, sar, valid = read_pair(strip)
        optical = np.where(valid, np.nan_to_num(optical), 0).astype(np.float32, copy=False)
        sar = np.where(valid, np.nan_to_num(sar), 0).astype(np.float32, copy=False)
        inner = strip.intersect(core)
        if inner is not None:
            core_valid[
                inner.y0 - core.y0 : inner.y1 - core.y0, inner.x0 - core.x0 : inner.x1 - core.x0
            ] = valid[
                inner.y0 - strip.y0 : inner.y1 - strip.y0, inner.x0 - strip.x0 : inner.x1 - strip.x0
            ]
        for j in cols:
            x0 = grid.extent(i, j).x0 - strip.x0
            if int(valid[:, x0 : x0 + tile].sum()) < min_valid:
                skipped[0] += 1
                continue
            pending.append(((i, j), optical[:, :, x0 : x0 + tile], sar[:, :, x0 : x0 + tile]))
            if len(pending) == batch_size:
                yield flush()
    if pending:
        yield flush()


def predict_block(
    grid: TileGrid,
    core: PixelBox,
    read_pair: PairReader,
    predictor: Callable[[np.ndarray, np.ndarray], np.ndarray],
    batch_size: int,
    threshold: float = 0.5,
    min_valid_fraction: float = 0.0,
    prefetch: int = 2,
    on_batch: Callable[[int], None] | None = None,
    on_predicted: Callable[[list[tuple[int, int]]], None] | None = None,
) -> BlockOutput:
    """Run every tile touching `core` and blend its probabilities into the core only.

    `on_predicted(tiles)` runs right after each batch's forward, in this thread (the routing
    diagnostics read what the forward recorded)."""
    h, w = core.height, core.width
    acc_wp = np.zeros((h, w), dtype=np.float32)
    acc_w = np.zeros((h, w), dtype=np.float32)
    core_valid = np.zeros((h, w), dtype=bool)
    weights = weight_window(grid.tile, grid.overlap)
    skipped = [0]
    run = 0
    batches = _iter_batches(
        grid, core, read_pair, batch_size, min_valid_fraction, core_valid, skipped
    )
    for batch in read_ahead(batches, prefetch):
        probs = predictor(batch.optical, batch.sar)
        if on_predicted is not None:
            on_predicted(batch.tiles)
        for k, (i, j) in enumerate(batch.tiles):  # global row-major order
            part = grid.extent(i, j).intersect(core)
            if part is None:
                continue
            ty, tx = part.y0 - i * grid.stride, part.x0 - j * grid.stride
            src = (slice(ty, ty + part.height), slice(tx, tx + part.width))
            dst = (
                slice(part.y0 - core.y0, part.y1 - core.y0),
                slice(part.x0 - core.x0, part.x1 - core.x0),
            )
            wt = weights[src]
            acc_wp[dst] += wt * probs[k][src]
            acc_w[dst] += wt
        run += len(batch.tiles)
        if on_batch is not None:
            on_batch(len(batch.tiles))
    valid = core_valid & (acc_w > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        prob = np.where(valid, acc_wp / acc_w, np.float32(np.nan)).astype(np.float32)
    mask = np.where(valid, (prob >= threshold).astype(np.uint8), np.uint8(255)).astype(np.uint8)
    return BlockOutput(prob, mask, valid.astype(np.uint8), run, skipped[0])
