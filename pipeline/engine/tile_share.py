"""Tiles that straddle block borders run once: their owner hands the other blocks their parts.

Every tile touching a block's core used to run in that block, so a tile across a border ran in
each block it touched (484 tile runs for 441 tiles at 4096² with block 2048: 9 % of the model time).
Now each tile has one **owner**, the block holding its origin (its top-left pixel, always in the
scene; the owner is also the first block it touches in row-major order), which runs it and writes,
for every other block it touches, the part of its probability that lands in that block's core into
the staging prefix (`tiles/RRRRR_CCCCC-IIIII_JJJJJ.npy`: block, then tile). A block takes a foreign
tile's part from there; one still missing when the block has run its own tiles is waited for when
its owner runs in this process (a thread of the same pool), else computed here (another process,
or an owner that failed), so a block never depends on another one finishing, and resume and Dask
work as before.

Byte-identity: a tile's probability does not depend on which block runs it (fixed-shape batches,
`pipeline.engine.predict`), and each block still blends its tiles in global row-major order.
"""

from __future__ import annotations

import io
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import numpy as np

from pipeline.engine.tiling import TileGrid
from pipeline.geometry import PixelBox
from pipeline.io import storage

BlockRC = tuple[int, int]  # (row, col) of a block in the block grid
Tile = tuple[int, int]  # (row, col) of a tile in the tile grid

_running: dict[tuple[str, BlockRC], threading.Event] = {}
_running_lock = threading.Lock()


class TileShare:
    """The straddling tiles' parts of one run, in its staging prefix (local or s3://)."""

    def __init__(self, prefix: str, grid: TileGrid, block: int) -> None:
        self.prefix = prefix
        self.grid = grid
        self.block = block
        if not storage.is_remote(prefix):
            os.makedirs(prefix, exist_ok=True)

    def block_of(self, core: PixelBox) -> BlockRC:
        """The (row, col) of the block whose core this is."""
        return core.y0 // self.block, core.x0 // self.block

    def core(self, rc: BlockRC) -> PixelBox:
        """The core of block `rc`, clipped to the scene."""
        r, c = rc
        b, g = self.block, self.grid
        return PixelBox(r * b, min((r + 1) * b, g.height), c * b, min((c + 1) * b, g.width))

    def blocks_of(self, tile: Tile) -> list[BlockRC]:
        """The blocks whose core tile `tile` touches, row-major: the first is its owner."""
        ext, g, b = self.grid.extent(*tile), self.grid, self.block
        rows = range(ext.y0 // b, (min(ext.y1, g.height) - 1) // b + 1)
        cols = range(ext.x0 // b, (min(ext.x1, g.width) - 1) // b + 1)
        return [(r, c) for r in rows for c in cols]

    def owner(self, tile: Tile) -> BlockRC:
        """The block that runs `tile`: the one holding its origin."""
        y0, x0 = tile[0] * self.grid.stride, tile[1] * self.grid.stride
        return y0 // self.block, x0 // self.block

    def part_slices(self, tile: Tile, core: PixelBox) -> tuple[tuple[slice, slice], PixelBox]:
        """(slices of the tile that land in `core`, the pixel box they cover)."""
        part = self.grid.extent(*tile).intersect(core)
        assert part is not None, f"tile {tile} does not touch {core}"
        ty, tx = part.y0 - tile[0] * self.grid.stride, part.x0 - tile[1] * self.grid.stride
        return (slice(ty, ty + part.height), slice(tx, tx + part.width)), part

    def _uri(self, tile: Tile, rc: BlockRC) -> str:
        name = f"{rc[0]:05d}_{rc[1]:05d}-{tile[0]:05d}_{tile[1]:05d}.npy"
        return storage.join(self.prefix, name)

    def put(self, tile: Tile, probability: np.ndarray, skip: BlockRC) -> None:
        """Write the parts of a tile's T×T probability for every block it touches but `skip`."""
        for rc in self.blocks_of(tile):
            if rc == skip:
                continue
            src, _ = self.part_slices(tile, self.core(rc))
            buf = io.BytesIO()
            np.save(buf, np.ascontiguousarray(probability[src]), allow_pickle=False)
            _write(self._uri(tile, rc), buf.getvalue())

    def get(self, tile: Tile, rc: BlockRC) -> np.ndarray | None:
        """The part of `tile` for block `rc`, or None while its owner has not written it."""
        uri = self._uri(tile, rc)
        try:
            data = storage.read_bytes(uri)
        except FileNotFoundError:
            return None
        try:
            return np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError, EOFError):  # unreadable (a crash mid-write): run it here
            return None

    @contextmanager
    def running(self, rc: BlockRC) -> Iterator[None]:
        """Tell this process's other blocks that block `rc` is running (they may wait for it)."""
        key = (self.prefix, rc)
        event = threading.Event()
        with _running_lock:
            _running[key] = event
        try:
            yield
        finally:
            with _running_lock:
                if _running.get(key) is event:
                    del _running[key]
            event.set()

    def wait_for_owner(self, tile: Tile) -> None:
        """Wait while the owner of `tile` runs in this process (it writes its parts as it goes)."""
        with _running_lock:
            event = _running.get((self.prefix, self.owner(tile)))
        if event is not None:
            event.wait()


def _write(uri: str, data: bytes) -> None:
    """Whole or not at all: a temporary name then a rename (no fsync: a part that a crash left
    unreadable is recomputed by the block that needs it, and only block markers are durable)."""
    if storage.is_remote(uri):
        storage.write_bytes_atomic(uri, data)
        return
    fd, tmp = tempfile.mkstemp(prefix=".part.", dir=os.path.dirname(uri))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, uri)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
