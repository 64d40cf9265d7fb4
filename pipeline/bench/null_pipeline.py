"""`m2cd bench pipeline --null-model`: the engine's own ceiling, against the I/O limit.

The null model (`pipeline.bench.null_model`) costs nothing, so an end-to-end run with it measures
the engine alone: plan, reads, normalisation, transfers, blending, Zarr writes, markers, finalize.
In the same process and repeat, the **I/O limit** decodes the same input windows (every tile-row
strip of every block, raw, no normalisation) and encodes the same outputs with the same codecs
(each block's arrays into a fresh staging Zarr store and its marker, with the same products pass
trailing them on its thread, then the same `finalize_run`), with no engine in between.
`finalize_tail` is what the run spends on its products after the last block (the pass itself,
`finalize`, overlaps the blocks). `io_ratio` = engine Mpx/s ÷ I/O-limit Mpx/s (goal ≥ 0.7): the part of
the host work that is the engine's own. Runs of a repeat are interleaved (io, engine, 1 thread,
2 threads) and each ratio is taken within a repeat, then the median: the machine is shared.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from pipeline.bench.machine import machine_info, pinned_to_cores
from pipeline.bench.null_model import install_null_model
from pipeline.config import load_detect_config
from pipeline.engine.block import BlockResult
from pipeline.engine.device import resolve_device
from pipeline.engine.finalize import finalize_run
from pipeline.engine.local import run_blocks, with_products_pass
from pipeline.engine.pair import pair_for
from pipeline.engine.plan import STORE, RunPlan, plan_run
from pipeline.engine.request import DetectRequest
from pipeline.engine.stage_times import recording, stage
from pipeline.geometry import PixelBox
from pipeline.io import storage
from pipeline.products.zarr_store import MASK, PROBABILITY, VALID, write_region
from pipeline.synth import synth_pair


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def _sig(x: float) -> float:
    """4 significant digits: a toy scene's Mpx/s is 0.00x."""
    return float(f"{x:.4g}")


def run(
    size: int = 4096,
    tile: int = 256,
    overlap: int = 64,
    block: int = 2048,
    batch_size: int = 8,
    device: str = "cpu",
    repeats: int = 3,
    bands_of: str = "m2cd_mit_b0",
    workdir: str | None = None,
) -> dict[str, Any]:
    """Synthesise a size² pair; per repeat: I/O limit, engine, engine at 1 and at 2 threads."""

    dev = resolve_device(device)
    mpx = size * size / 1e6
    with tempfile.TemporaryDirectory(prefix="m2cd-bench-null-", dir=workdir) as tmp:
        root = Path(tmp)
        pair = synth_pair(root / "scene", size=(size, size), seed=7)
        base = {
            "tiling.tile": tile,
            "tiling.overlap": overlap,
            "tiling.block": block,
            "inference.batch_size": batch_size,
            "inference.device": device,
        }
        configs = {
            "engine": load_detect_config("default", base),
            # one thread of work per block worker: no read-ahead thread, 1 torch thread
            "inline": load_detect_config("default", {**base, "inference.prefetch": 0}),
        }
        ref = install_null_model(bands_of, dev)
        counter = [0]

        def new_plan(kind: str, null: bool = True) -> RunPlan:
            counter[0] += 1
            out = str(root / f"{kind}{counter[0]}")
            req = DetectRequest(
                optical=str(pair.optical),
                sar=str(pair.sar),
                out=out,
                model=bands_of,
                config=configs["inline" if kind.startswith("t") else "engine"],
            )
            plan = plan_run(req)
            return plan.model_copy(update={"model": ref}) if null else plan

        def engine(kind: str, workers: int) -> tuple[float, dict[str, float], RunPlan]:
            with recording() as stages:
                start = time.perf_counter()
                with stage("plan"):
                    plan = new_plan(kind)
                todo = list(range(len(plan.blocks)))
                blocks_start = time.perf_counter()
                ends: list[float] = []

                def blocks(on_done: Callable[[int], None]) -> None:
                    run_blocks(plan, todo, workers, lambda n: None, on_done)
                    ends.append(time.perf_counter())

                written = with_products_pass(plan, blocks)
                finalize_run(plan, seconds=time.perf_counter() - start, written=written)
                stages["blocks_wall"] = ends[0] - blocks_start
                stages["finalize_tail"] = time.perf_counter() - ends[0]
                seconds = time.perf_counter() - start
            return seconds, stages, plan

        # warm-up (model build and hash for the I/O plan, GDAL and Zarr imports), and the outputs
        # the I/O limit encodes: the engine's own arrays, read back untimed
        _, _, warm = engine("warm", 1)
        published = zarr.open_group(storage.zarr_store(os.path.join(warm.out, STORE)), mode="r")
        outputs = {
            b.id: {
                name: np.asarray(published[name][b.y0 : b.y1, b.x0 : b.x1])
                for name in (PROBABILITY, MASK, VALID)
            }
            for b in warm.blocks
        }

        def io_limit() -> float:
            start = time.perf_counter()
            plan = new_plan("io", null=False)
            scenes = pair_for(plan)
            store = storage.zarr_store(plan.store_uri)
            written = with_products_pass(
                plan, lambda on_done: write_blocks(plan, scenes, store, on_done)
            )
            finalize_run(plan, seconds=time.perf_counter() - start, written=written)
            return time.perf_counter() - start

        def write_blocks(
            plan: RunPlan, scenes: Any, store: Any, on_done: Callable[[int], None]
        ) -> None:
            grid = plan.tile_grid
            for b in plan.blocks:
                cols = grid.tile_cols_for(b.core)
                for i in grid.tile_rows_for(b.core):
                    first, last = grid.extent(i, cols[0]), grid.extent(i, cols[-1])
                    strip = PixelBox(first.y0, first.y1, first.x0, last.x1)
                    scenes.optical.read_window(strip)
                    scenes.sar.read_window(strip)
                arrays = outputs[b.id]
                write_region(store, b.y0, b.x0, arrays[PROBABILITY], arrays[MASK], arrays[VALID])
                marker = BlockResult(
                    block_id=b.id,
                    name=b.name,
                    tiles_run=0,
                    tiles_skipped=0,
                    valid_px=int(arrays[VALID].sum()),
                    changed_px=int((arrays[MASK] == 1).sum()),
                    changed_km2=None,
                    seconds=0.0,
                )
                storage.write_json(plan.marker_uri(b), marker.model_dump(exclude={"resumed"}))
                on_done(b.id)

        pinned: list[bool] = []

        def on_cores(n: int, fn: Callable[[], Any]) -> Any:
            """`fn` with 1 torch thread on `n` cores (the scaling runs)."""
            before = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                with pinned_to_cores(n) as ok:
                    pinned.append(ok)
                    return fn()
            finally:
                torch.set_num_threads(before)

        load_before = os.getloadavg()[0]
        io_s, eng_s, one_s, two_s, splits = [], [], [], [], []
        blocks_scaling = []
        for _ in range(repeats):
            io_s.append(io_limit())
            seconds, stages, plan = engine("engine", 1)
            eng_s.append(seconds)
            splits.append(stages)
            one = on_cores(1, lambda: engine("t1_", 1))
            two = on_cores(2, lambda: engine("t2_", 2))
            one_s.append(one[0])
            two_s.append(two[0])
            blocks_scaling.append(one[1]["blocks_wall"] / two[1]["blocks_wall"])
        n_blocks = len(plan.blocks)
        split = {
            k: round(_median([s[k] for s in splits]), 4) for k in splits[0] if k != "blocks_wall"
        }
        engine_s = _median(eng_s)
        cores = machine_info()["cores"]
        return {
            "benchmark": "pipeline-null",
            "model": "null",
            "bands_of": bands_of,
            "device": str(dev),
            "scene": [size, size],
            "tile": tile,
            "overlap": overlap,
            "block": block,
            "blocks": n_blocks,
            "batch_size": batch_size,
            "tiles": plan.tiles,
            "repeats": repeats,
            "null_mpx_per_s": _sig(mpx / engine_s),
            "io_limit_mpx_per_s": _sig(mpx / _median(io_s)),
            "io_ratio": round(_median([i / e for i, e in zip(io_s, eng_s, strict=True)]), 4),
            "io_ratio_goal": 0.7,
            "mpx_per_s_per_core": _sig(mpx / _median(one_s)),
            "mpx_per_s_2_threads": _sig(mpx / _median(two_s)),
            "thread_scaling": round(_median([a / b for a, b in zip(one_s, two_s, strict=True)]), 4),
            "thread_scaling_goal": 1.7,
            # the block phase alone (the products pass is one thread whatever the workers)
            "thread_scaling_blocks": round(_median(blocks_scaling), 4),
            "thread_scaling_note": (
                "1 → 2 block workers on 1 → 2 cores, 1 torch thread each, no read-ahead thread"
                if n_blocks > 1
                else "one block: a second worker has nothing to run"
            ),
            # False: the process could not be pinned, and the 1-worker run had every core
            "thread_scaling_pinned": all(pinned),
            "split_seconds": split,
            "split_fraction": {k: round(v / engine_s, 4) for k, v in split.items()},
            "engine_seconds_all": [round(x, 3) for x in eng_s],
            "io_limit_seconds_all": [round(x, 3) for x in io_s],
            "one_thread_seconds_all": [round(x, 3) for x in one_s],
            "two_threads_seconds_all": [round(x, 3) for x in two_s],
            "loadavg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "cores": cores,
            "machine": machine_info(),
        }


def format_table(r: dict[str, Any]) -> str:
    """One line per figure for a terminal; `--json` prints the same result for scripts."""
    split = ", ".join(f"{k} {v:.0%}" for k, v in r["split_fraction"].items() if v >= 0.005)
    return (
        f"pipeline bench, null model ({r['bands_of']} bands) on {r['device']}, "
        f"{r['scene'][0]}×{r['scene'][1]} px, {r['blocks']} block(s) of {r['block']}, "
        f"median of {r['repeats']}\n"
        f"  engine       : {r['null_mpx_per_s']:.2f} Mpx/s\n"
        f"  I/O limit    : {r['io_limit_mpx_per_s']:.2f} Mpx/s → io_ratio {r['io_ratio']:.3f} "
        f"(goal ≥ {r['io_ratio_goal']})\n"
        f"  1 thread     : {r['mpx_per_s_per_core']:.2f} Mpx/s; 2 threads "
        f"{r['mpx_per_s_2_threads']:.2f} → scaling {r['thread_scaling']:.2f}× "
        f"(goal ≥ {r['thread_scaling_goal']})\n"
        f"  split        : {split}"
    )
