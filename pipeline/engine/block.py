"""Run one block of a plan: its tiles through the model, its core into the store, then its marker.

A block is done exactly when its marker exists (written last, atomically), which is what makes
`run_block` idempotent and a killed run resumable without recomputing a finished block.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import torch
from pydantic import BaseModel

from pipeline.engine import blend, pair
from pipeline.engine.cpu_forwards import concurrent_forwards, one_thread_forwards
from pipeline.engine.device import resolve_device
from pipeline.engine.models import load_model
from pipeline.engine.output_grid import pixel_area_km2
from pipeline.engine.plan import RunPlan
from pipeline.engine.predict import Predictor
from pipeline.engine.read_ahead import read_ahead_depth
from pipeline.engine.routing import BlockRouting
from pipeline.engine.stage_times import stage
from pipeline.engine.tile_share import TileShare
from pipeline.engine.tiling import BlockSpec
from pipeline.io import storage
from pipeline.io.remote import is_remote_input
from pipeline.products.zarr_store import write_region


class BlockResult(BaseModel):
    """One block's counts (`resumed`: it was already done and nothing ran; `tiles_run`: the tiles
    this block ran, those it owns and any foreign one whose part was missing)."""

    block_id: int
    name: str
    tiles_run: int
    tiles_skipped: int
    tiles_shared: int = 0  # straddling tiles' parts taken from the blocks that own them
    valid_px: int
    changed_px: int
    changed_km2: float | None
    seconds: float
    resumed: bool = False
    # products.diagnostics: valid pixels per [stream (optical, SAR)][stage][expert]
    routing_counts: list[list[list[int]]] | None = None


def block_marker(plan: RunPlan, block: BlockSpec) -> dict[str, Any] | None:
    """The recorded result of a finished block, or None while it is not done."""
    return storage.read_json(plan.marker_uri(block), missing_ok=True)


def run_block(
    plan: RunPlan,
    block_id: int,
    on_tiles: Callable[[int], None] | None = None,
    block_threads: int = 1,
) -> BlockResult:
    """Run every tile of one block, write its core into the store, then mark it done.

    Idempotent: a block already marked done returns its recorded result at once (`resumed`).
    `block_threads`: blocks this process runs at the same time (they share the cores).
    """
    block = plan.blocks[block_id]
    if (done := block_marker(plan, block)) is not None:
        return BlockResult(**{**done, "resumed": True})
    device = resolve_device(plan.config.inference.device, "inference.device")
    with one_thread_forwards(device):
        return _run_block(plan, block, device, on_tiles, block_threads)


def _run_block(
    plan: RunPlan,
    block: BlockSpec,
    device: torch.device,
    on_tiles: Callable[[int], None] | None,
    block_threads: int,
) -> BlockResult:
    start = time.perf_counter()
    inf = plan.config.inference
    model = load_model(plan.model, device)
    bands = getattr(getattr(model, "config", None), "bands", None)
    reader = pair.pair_reader(
        plan,
        getattr(bands, "optical_channels", None),
        getattr(bands, "sar_channels", None),
    )
    predictor = Predictor(
        model, inf.batch_size, device, inf.precision, inf.channels_last, tta=inf.tta
    )
    forwards = concurrent_forwards(inf.forwards, device, block_threads)
    threshold = plan.config.products.threshold
    assert threshold is not None, "DetectRequest resolves the threshold before a plan exists"
    # diagnostics off: the plain predictor, no hook on the model
    routing = (
        BlockRouting(predictor, plan.tile_grid, block.core)
        if plan.config.products.diagnostics
        else None
    )
    out = blend.predict_block(
        plan.tile_grid,
        block.core,
        reader,
        routing.recorder if routing is not None else predictor,
        inf.batch_size,
        threshold=threshold,
        min_valid_fraction=plan.config.tiling.min_valid_fraction,
        prefetch=read_ahead_depth(
            inf.prefetch,
            device,
            is_remote_input(plan.optical) or is_remote_input(plan.sar),
            forwards,
        ),
        forwards=forwards,
        on_batch=on_tiles,
        on_predicted=routing.on_predicted if routing is not None else None,
        # diagnostics need every tile's routing in the block that blends it: no sharing then
        share=None
        if routing is not None
        else TileShare(
            storage.join(plan.staging, "tiles"), plan.tile_grid, plan.config.tiling.block
        ),
    )
    if on_tiles is not None and out.tiles_skipped:
        on_tiles(out.tiles_skipped)
    with stage("write"):
        write_region(
            storage.zarr_store(plan.store_uri),
            block.y0,
            block.x0,
            out.probability,
            out.mask,
            out.valid,
        )
    counts = routing.save(plan.routing_uri(block), out.valid) if routing is not None else None
    areas = pixel_area_km2(plan.grid, range(block.y0, block.y1))
    changed_km2 = None
    if areas is not None:
        changed_km2 = float(((out.mask == 1).sum(axis=1) * areas).sum())
    result = BlockResult(
        block_id=block.id,
        name=block.name,
        tiles_run=out.tiles_run,
        tiles_skipped=out.tiles_skipped,
        tiles_shared=out.tiles_shared,
        valid_px=out.valid_px,
        changed_px=out.changed_px,
        changed_km2=changed_km2,
        seconds=round(time.perf_counter() - start, 3),
        routing_counts=counts,
    )
    # where and how it ran: CPU bits depend on the intra-op thread count (pipeline.engine.cpu_forwards)
    extra = {
        "pid": os.getpid(),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "forwards": forwards,
    }
    record = result.model_dump(exclude={"resumed"} if counts else {"resumed", "routing_counts"})
    with stage("write"):
        storage.write_json(plan.marker_uri(block), {**record, **extra})
    return result


def pending_blocks(plan: RunPlan) -> list[int]:
    """Ids of the blocks not yet marked done (one listing of the marker prefix)."""
    fs = storage.fs_for(plan.staging)
    prefix = storage.join(plan.staging, "blocks")
    try:
        names = {os.path.basename(p) for p in fs.ls(prefix, detail=False)}
    except FileNotFoundError:
        names = set()
    return [b.id for b in plan.blocks if f"{b.name}.json" not in names]
