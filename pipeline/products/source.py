"""Chunk-by-chunk reads of the finished `change.zarr` store.

Every product is derived from one pass over the store, one Zarr chunk at a time, so the memory of
finalize is bounded by a chunk (the engine's block) and never by the scene.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import zarr

from pipeline.errors import InputError
from pipeline.io.storage import zarr_store
from pipeline.products.zarr_store import MASK, PROBABILITY


@dataclass(frozen=True)
class Block:
    """One chunk of the store: its pixel offset in the scene and its two layers."""

    row_off: int
    col_off: int
    probability: np.ndarray  # float32, NaN = nodata
    mask: np.ndarray  # uint8, 0/1, 255 = nodata

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of this block (edge blocks are smaller than the chunk size)."""
        return self.mask.shape  # type: ignore[return-value]


def open_store(store_uri: str) -> zarr.Group:
    """Open the engine's Zarr v3 group read-only (local path or s3:// through pipeline.storage)."""
    try:
        return zarr.open_group(zarr_store(store_uri, read_only=True), mode="r", zarr_format=3)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as exc:
        raise InputError(store_uri, f"no Zarr group found ({exc})") from None


def check_layout(group: zarr.Group, store_uri: str, shape: tuple[int, int]) -> tuple[int, int]:
    """Check the store holds probability + mask on the expected grid; return the chunk shape."""
    for name in (PROBABILITY, MASK):
        if name not in group:
            raise InputError(store_uri, f"the Zarr store has no '{name}' array")
        arr = group[name]
        if tuple(arr.shape) != tuple(shape):
            raise InputError(
                store_uri, f"'{name}' has shape {tuple(arr.shape)}, expected the scene grid {shape}"
            )
    return tuple(group[MASK].chunks)  # type: ignore[return-value]


class ChunkGate(Protocol):
    """Says when a chunk of a store that is still being written is final."""

    def chunk_done(self, row_off: int, col_off: int) -> bool:
        """Whether the chunk at (row_off, col_off) is final now."""

    def wait_chunk(self, row_off: int, col_off: int) -> None:
        """Return once the chunk at (row_off, col_off) is final (or raise: the pass stops)."""


def iter_blocks(
    group: zarr.Group,
    chunks: tuple[int, int],
    pool: Executor | None = None,
    ahead: int = 2,
    gate: ChunkGate | None = None,
) -> Iterator[Block]:
    """Yield the store chunk by chunk in row-major order (deterministic product order).

    With `pool`, up to `ahead` chunks are read (decompressed) on it while the caller works on the
    current one; memory stays bounded by `ahead + 1` chunks. With `gate`, each chunk is read only
    once the gate says it is final, so the pass can run while the engine still writes later
    chunks (`pipeline.engine.block_gate`); the chunks read ahead are handed out before waiting.
    """
    prob, mask = group[PROBABILITY], group[MASK]
    height, width = mask.shape
    ch, cw = chunks

    def read(r0: int, c0: int) -> Block:
        sl = (slice(r0, min(r0 + ch, height)), slice(c0, min(c0 + cw, width)))
        return Block(
            row_off=r0,
            col_off=c0,
            probability=np.asarray(prob[sl], dtype=np.float32),
            mask=np.asarray(mask[sl], dtype=np.uint8),
        )

    origins = ((r0, c0) for r0 in range(0, height, ch) for c0 in range(0, width, cw))
    if pool is None:
        for r0, c0 in origins:
            if gate is not None:
                gate.wait_chunk(r0, c0)
            yield read(r0, c0)
        return
    queued: deque[Future[Block]] = deque()
    for r0, c0 in origins:
        if gate is not None:
            if not gate.chunk_done(r0, c0):
                while queued:  # the caller works on what is final while this chunk is written
                    yield queued.popleft().result()
            gate.wait_chunk(r0, c0)
        queued.append(pool.submit(read, r0, c0))
        if len(queued) > ahead:
            yield queued.popleft().result()
    while queued:
        yield queued.popleft().result()
