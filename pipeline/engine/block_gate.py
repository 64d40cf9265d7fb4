"""Which blocks of a run are done, so the products pass can trail the blocks instead of waiting
for the last one.

The store's chunks are the blocks' cores (`pipeline.products.zarr_store`), and the products are one
row-major pass over the chunks. Started beside the blocks, the pass reads a chunk as soon as its
block is marked done here, so only the last chunk row, the COG layout and the quick-looks are
left once the blocks end: finalize was 28 % of a 16384² null-model run when it started after
them (BENCHMARKS.md). The products do not change: the same pass reads the same finished chunks.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from pipeline.engine.tiling import BlockSpec


class BlocksStopped(Exception):
    """The block phase stopped (a block failed, or Ctrl-C) before this chunk's block was done;
    the products pass gives up, and the block phase's own error is what the caller reports."""


class BlockGate:
    """Blocks marked done by the block phase, awaited by the products pass, chunk by chunk."""

    def __init__(self, blocks: list[BlockSpec], done: Iterable[int] = ()) -> None:
        self._by_origin = {(b.y0, b.x0): b.id for b in blocks}
        self._done = set(done)
        self._stopped = False
        self._cond = threading.Condition()

    def mark_done(self, block_id: int) -> None:
        """Block `block_id`'s core is in the store and its marker written."""
        with self._cond:
            self._done.add(block_id)
            self._cond.notify_all()

    def stop(self) -> None:
        """No more blocks will be marked: every wait, now or later, raises BlocksStopped."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def chunk_done(self, row_off: int, col_off: int) -> bool:
        """Whether the block whose core starts at (row_off, col_off) is done now."""
        with self._cond:
            return self._by_origin[(row_off, col_off)] in self._done

    def wait_chunk(self, row_off: int, col_off: int) -> None:
        """Return once the block whose core starts at (row_off, col_off) is done.

        Raises BlocksStopped once `stop` was called, even for a done block: a stopped run must
        not go on writing products for seconds (Ctrl-C exits within one chunk).
        """
        block_id = self._by_origin[(row_off, col_off)]
        with self._cond:
            while not self._stopped and block_id not in self._done:
                self._cond.wait()
            if self._stopped:
                raise BlocksStopped(f"the block phase stopped before chunk ({row_off}, {col_off})")
