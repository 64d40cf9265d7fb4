"""A whole run in one process: plan, every pending block on a thread pool, finalize (the CLI's
`m2cd detect`; flows drive the same three steps through Prefect and Dask instead).
"""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed

from tqdm.auto import tqdm

from pipeline.engine.block import pending_blocks, run_block
from pipeline.engine.finalize import RunSummary, finalize_run, summary_from_manifest
from pipeline.engine.plan import RunPlan, plan_run, read_manifest
from pipeline.engine.request import DetectRequest
from pipeline.errors import OutputError

_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


def output_error(out: str, exc: OSError) -> OutputError | None:
    """The clear error for a full (or read-only) output disk, or None for any other OSError.

    GDAL reports it as a RasterioIOError without errno, hence the message check.
    """
    if exc.errno not in _DISK_FULL and "No space left on device" not in str(exc):
        return None
    where = f" while writing {exc.filename}" if exc.filename else ""
    return OutputError(
        f"{out}: no space left on the device (or quota exceeded, or read-only){where}; no product "
        "was published and finished blocks are kept: free space and rerun the same command"
    )


def detect(
    request: DetectRequest,
    progress: bool = True,
    workers: int = 1,
    echo: Callable[[str], None] | None = None,
) -> RunSummary:
    """Plan, run every pending block in this process (`workers` threads), then finalize."""
    try:
        return _detect(request, progress, workers, echo)
    except OSError as exc:
        if (clear := output_error(request.out, exc)) is None:
            raise
        raise clear from None


def _detect(
    request: DetectRequest,
    progress: bool,
    workers: int,
    echo: Callable[[str], None] | None,
) -> RunSummary:
    start = time.perf_counter()
    plan = plan_run(request)
    if echo is not None:
        echo(plan.describe())
    if plan.finished:
        summary = summary_from_manifest(read_manifest(plan.out) or {})
        if echo is not None:
            echo(f"run {plan.run_key} already finished in {plan.out}: nothing to do")
        return summary
    todo = pending_blocks(plan)
    resumed = len(plan.blocks) - len(todo)
    if echo is not None and resumed:
        echo(f"resuming: {resumed} of {len(plan.blocks)} block(s) already done")
    done_tiles = sum(b.tiles for b in plan.blocks if b.id not in set(todo))
    with tqdm(
        total=plan.tile_runs, initial=done_tiles, unit="tile", disable=not progress, smoothing=0.1
    ) as bar:
        if workers <= 1:
            for block_id in todo:
                run_block(plan, block_id, on_tiles=bar.update)
        else:
            run_pool(plan, todo, workers, bar.update)
    return finalize_run(plan, seconds=time.perf_counter() - start, blocks_resumed=resumed)


def run_pool(plan: RunPlan, todo: list[int], workers: int, update: Callable[[int], None]) -> None:
    """Blocks on `workers` threads sharing this process's model (torch releases the GIL).

    Threads, not processes: no second model in memory, and every forward keeps this process's
    intra-op thread count, which is what keeps the products byte-identical to a 1-worker run
    (CPU kernels split their reductions by thread count). Separate processes are Dask's job.
    """
    lock = threading.Lock()

    def tick(n: int) -> None:
        with lock:
            update(n)

    with ThreadPoolExecutor(workers, thread_name_prefix="m2cd-block") as ex:
        futures = [ex.submit(run_block, plan, i, tick) for i in todo]
        for fut in as_completed(futures):
            fut.result()
