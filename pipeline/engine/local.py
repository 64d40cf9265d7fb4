"""A whole run in one process: plan, every pending block on a thread pool with the products pass
trailing them on its own thread, publish (the CLI's `m2cd detect`; flows drive the same steps
through Prefect and Dask instead).

From staging to publish the run holds the output's writer lease (`pipeline.io.lease`), so two runs
into one output never interleave: the second waits (`output.lock_wait_s`) or stops with one line,
and what a run reports is what it published.
"""

from __future__ import annotations

import errno
import logging
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed

from tqdm.auto import tqdm

from pipeline.engine.block import pending_blocks, run_block
from pipeline.engine.block_gate import BlockGate
from pipeline.engine.crash_points import crash_point
from pipeline.engine.finalize import (
    RunSummary,
    finalize_run,
    products_pending,
    summary_from_manifest,
    write_run_products,
)
from pipeline.engine.plan import RunPlan, open_run, read_manifest, stage_run
from pipeline.engine.publish import remove_staging
from pipeline.engine.request import DetectRequest
from pipeline.engine.staging import sweep_stale
from pipeline.errors import ConfigError, OutputError
from pipeline.io.lease import writer_lease

log = logging.getLogger(__name__)

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
    if workers < 1:
        raise ConfigError(f"--workers: must be at least 1 (got {workers})")
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
    opened = open_run(request)  # read-only: a bad input stops here, before any lock or staging
    out_cfg = opened.config.output
    with writer_lease(
        opened.out, opened.run_key, out_cfg.lock_wait_s, out_cfg.lease_ttl_s
    ) as lease:
        plan = stage_run(opened)
        if echo is not None:
            echo(plan.describe())
        for stale in sweep_stale(plan.out, out_cfg.staging_max_age_days, keep=plan.run_key):
            log.info("removed stale staging %s", stale.describe())
        if plan.finished:
            remove_staging(plan)  # left by a crash between the commit and the cleanup
            summary = summary_from_manifest(read_manifest(plan.out) or {})
            if echo is not None:
                echo(f"run {plan.run_key} already finished in {plan.out}: nothing to do")
            return summary
        return _run_blocks_and_finalize(plan, progress, workers, echo, start, lease.check)


def _run_blocks_and_finalize(
    plan: RunPlan,
    progress: bool,
    workers: int,
    echo: Callable[[str], None] | None,
    start: float,
    before_publish: Callable[[], None],
) -> RunSummary:
    todo = pending_blocks(plan)
    resumed = len(plan.blocks) - len(todo)
    if echo is not None and resumed:
        echo(f"resuming: {resumed} of {len(plan.blocks)} block(s) already done")
    done_tiles = sum(b.tiles for b in plan.blocks if b.id not in set(todo))
    with tqdm(
        total=plan.tile_runs, initial=done_tiles, unit="tile", disable=not progress, smoothing=0.1
    ) as bar:
        written = run_blocks_with_products(plan, todo, workers, bar.update)
    return finalize_run(
        plan,
        seconds=time.perf_counter() - start,
        blocks_resumed=resumed,
        before_publish=before_publish,
        written=written,
    )


def run_blocks_with_products(
    plan: RunPlan, todo: list[int], workers: int, update: Callable[[int], None]
) -> RunSummary | None:
    """Run the pending blocks while the products pass reads each finished chunk on its own thread
    (`pipeline.engine.block_gate`); return what the pass wrote into staging, or None when an
    interrupted publish had written them already (finalize_run completes it).

    Why beside the blocks: started after them, the pass was 28 % of a 16384² null-model run on
    2 cores (23 s of 81 s; BENCHMARKS.md); trailing them, what is left after the last block is
    its last chunk row, the COG layout and the quick-looks. A failed block or Ctrl-C stops the
    pass within one chunk; a failed pass lets the blocks finish (finished work is kept) and its
    error is raised after them.
    """
    return with_products_pass(
        plan, lambda on_done: run_blocks(plan, todo, workers, update, on_done)
    )


def with_products_pass(
    plan: RunPlan,
    blocks: Callable[[Callable[[int], None]], None],
    defer_pass_error: bool = False,
) -> RunSummary | None:
    """`blocks(on_done)` (which calls `on_done(block_id)` as each block is marked done) with the
    products pass trailing it on its own thread; what the pass wrote, or None when it had
    nothing to write (`finalize.products_pending`).

    `defer_pass_error`: a pass that fails after every block succeeded is logged and None is
    returned, so the caller writes the products itself (detect-scene's finalize task, which has
    its own retries for a transient store error); a failed block still raises.
    """
    if not products_pending(plan):
        blocks(lambda block_id: None)
        return None
    done = {b.id for b in plan.blocks} - set(pending_blocks(plan))
    gate = BlockGate(plan.blocks, done)
    with ThreadPoolExecutor(1, thread_name_prefix="m2cd-products") as pass_thread:
        products = pass_thread.submit(write_run_products, plan, gate)
        try:
            blocks(gate.mark_done)
            crash_point("finalize")  # every block done, no product in OUT yet
        except BaseException:
            gate.stop()
            raise
        try:
            return products.result()
        except Exception as exc:
            if not defer_pass_error:
                raise
            log.warning("products pass beside the blocks failed (%s); writing them after", exc)
            return None


def run_blocks(
    plan: RunPlan,
    todo: list[int],
    workers: int,
    update: Callable[[int], None],
    on_done: Callable[[int], None] | None = None,
) -> None:
    """Every block of `todo`, in this thread (`workers` 1) or on a pool; `on_done(block_id)` once
    each is marked done."""
    if workers <= 1:
        for block_id in todo:
            run_block(plan, block_id, on_tiles=update)
            if on_done is not None:
                on_done(block_id)
    else:
        run_pool(plan, todo, workers, update, on_done)


def run_pool(
    plan: RunPlan,
    todo: list[int],
    workers: int,
    update: Callable[[int], None],
    on_done: Callable[[int], None] | None = None,
) -> None:
    """Blocks on `workers` threads sharing this process's model (torch releases the GIL).

    Threads, not processes: no second model in memory. The blocks running together share the
    cores' forwards (`pipeline.engine.cpu_forwards`: each CPU forward on one thread, so the
    products are byte-identical to a 1-worker run). Separate processes are Dask's job.

    Stopping (Ctrl-C, or a block that failed): queued blocks are cancelled and running ones give up
    at their next batch (`tick` raises), so the pool is gone within about one batch, not after
    every remaining block; their markers are never written, so a rerun redoes exactly those.
    """
    lock = threading.Lock()
    stop = threading.Event()

    def tick(n: int) -> None:
        if stop.is_set():
            raise RunStopped("the run is stopping")
        with lock:
            update(n)

    ex = ThreadPoolExecutor(workers, thread_name_prefix="m2cd-block")
    try:
        together = min(workers, len(todo))
        futures = {ex.submit(run_block, plan, i, tick, together): i for i in todo}
        for fut in as_completed(futures):
            fut.result()
            if on_done is not None:
                on_done(futures[fut])
    except BaseException as exc:
        stop.set()
        if isinstance(exc, KeyboardInterrupt):
            _ignore_sigint()  # a second Ctrl-C while threads wind down would abort in C++
        ex.shutdown(wait=True, cancel_futures=True)
        raise
    ex.shutdown(wait=True)


class RunStopped(Exception):
    """Raised inside a running block when the pool stops; never reaches the user (the cause of
    the stop is what is re-raised)."""


def _ignore_sigint() -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
