"""detect-scene: one optical/SAR pair → change products, as plan → one task per block → finalize.

Thin by design: every pixel is handled by `pipeline.engine` (plan_run / run_block / finalize_run). The flow
adds task boundaries (a block is the unit of retry and of placement on a Dask worker), retries on
transient faults (safe: block writes are idempotent), small JSON manifests as persisted results, and
artifacts (a progress bar while blocks finish, a markdown summary at the end).
"""

from __future__ import annotations

import base64
import contextlib
import io
import logging
import time
from collections.abc import Callable
from typing import Any

from PIL import Image
from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NONE
from prefect.context import FlowRunContext
from prefect.events import emit_event
from prefect.exceptions import MissingContextError
from prefect.futures import as_completed

from flows.faults import is_transient, retry_transient
from flows.runner import (
    annotate_resources,
    block_resources,
    choose_runner,
    pin_worker_gpu,
    task_runner,
)
from m2cd.pretrained import DEFAULT_MODEL, shipped_checkpoint, shipped_models
from pipeline.config import load_detect_config
from pipeline.engine.block import pending_blocks, run_block
from pipeline.engine.finalize import RunSummary, finalize_run
from pipeline.engine.local import with_products_pass
from pipeline.engine.plan import plan_run
from pipeline.engine.request import validate_request
from pipeline.errors import M2CDError
from pipeline.io import storage
from pipeline.io.remote import redact_spec
from pipeline.io.storage import redact
from pipeline.registry import PROMOTED, Registry, registry_root

MANIFEST = {"persist_result": True, "result_serializer": "json", "cache_policy": NONE}
MAX_RESUBMITS = 2  # extra submissions of a block whose worker was lost


def resolve_model(model: str, registry: str | None = None) -> str:
    """The checkpoint URI a run uses.

    'promoted' → the registry's promoted model, or the shipped default model
    (``m2cd.pretrained``) while nothing is promoted, so a fresh install maps something real;
    a registry digest → its checkpoint; a shipped model's name (or 'default') → its directory;
    a path/URI stays as is.
    """

    if model == "default" or model in shipped_models():
        return str(shipped_checkpoint(DEFAULT_MODEL if model == "default" else model))
    if model == PROMOTED or model.startswith("sha256:"):
        reg = Registry(registry_root(registry))
        digest = model
        if model == PROMOTED:
            promotion = reg.promoted()
            if promotion is None:
                _log_info(f"no model promoted in {reg.root} yet: using the shipped {DEFAULT_MODEL}")
                return str(shipped_checkpoint())
            digest = promotion.digest
        return reg.get(digest).uri
    return model


def _log_info(message: str) -> None:
    """Log to the flow run when there is one (also callable outside a flow)."""

    try:
        get_run_logger().info(message)
    except MissingContextError:
        logging.getLogger(__name__).info(message)


@task(name="plan", retries=2, retry_delay_seconds=5, retry_condition_fn=retry_transient, **MANIFEST)
def plan_task(request: Any) -> Any:
    """Open both scenes lazily, check grids, lay out the tile grid and blocks (small JSON plan)."""

    return plan_run(request)


@task(
    name="block",
    task_run_name="block-{block_id}",
    retries=3,
    retry_delay_seconds=[2, 10, 30],
    retry_condition_fn=retry_transient,
    **MANIFEST,
)
def block_task(plan: Any, block_id: int) -> Any:
    """Infer and write one block (idempotent: returns at once when already marked done)."""

    pin_worker_gpu()
    return run_block(plan, block_id)


@task(
    name="finalize",
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=retry_transient,
    **MANIFEST,
)
def finalize_task(plan: Any, written: RunSummary | None = None) -> Any:
    """Publish the products once every block is done: `written` when the products pass beside
    the blocks wrote them into staging, else COGs, polygons, STAC item and quick-look here."""

    return finalize_run(plan, written=written)


def _run_blocks(
    runner: Any,
    plan: Any,
    block_ids: list[int],
    logger: Any,
    on_done: Callable[[int], None] | None = None,
) -> None:
    """Submit every block, move the progress artifact as they finish (and call `on_done`, which
    feeds the products pass), resubmit lost-worker blocks."""

    progress_id = create_progress_artifact(
        progress=0.0, description=f"blocks done of {len(block_ids)} ({plan.run_key[:12]})"
    )
    resources = block_resources(runner.client)
    logger.info("block tasks ask for resources %s", resources or "none (CPU workers)")
    finished: set[int] = set()
    todo, attempt = list(block_ids), 0
    while todo:
        attempt += 1
        with annotate_resources(resources):
            futures = {runner.submit(block_task, {"plan": plan, "block_id": b}): b for b in todo}
        todo = []
        for future in as_completed(list(futures)):
            block_id = futures[future]
            try:
                future.result()
            except Exception as exc:
                if is_transient(exc) and attempt <= MAX_RESUBMITS:
                    logger.warning("block %s lost (%s); resubmitting", block_id, type(exc).__name__)
                    todo.append(block_id)
                    continue
                raise
            finished.add(block_id)
            if on_done is not None:
                on_done(block_id)
            update_progress_artifact(progress_id, 100.0 * len(finished) / len(block_ids))


def _api_url() -> str | None:
    """The API this flow run reports to (the temporary server's URL in the embedded default)."""

    ctx = FlowRunContext.get()
    return str(ctx.client.api_url) if ctx and ctx.client else None


QUICKLOOK_THUMB_PX = 384  # the artifact's inline quick-look: ~40-80 kB of PNG, legible in the UI


def quicklook_image(uri: str | None) -> str:
    """The quick-look as a markdown image (a PNG data URI, so the UI shows it without reaching
    the product store), or "" when it cannot be read."""
    if not uri:
        return ""

    try:
        with Image.open(io.BytesIO(storage.read_bytes(uri))) as img:
            img.thumbnail((QUICKLOOK_THUMB_PX, QUICKLOOK_THUMB_PX))
            buf = io.BytesIO()
            img.convert("RGB").save(buf, format="PNG", optimize=True)
    except (OSError, ValueError):
        return ""
    return f"![quick-look](data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()})\n\n"


def summary_markdown(manifest: RunSummary, plan: Any) -> str:
    """The run summary shown in the Prefect UI: inputs (redacted), what the run decided
    (threshold, SAR units, resampling, model), figures, products and the quick-look."""

    area = "n/a (no CRS)" if manifest.changed_km2 is None else f"{manifest.changed_km2:.4f}"
    rows = "\n".join(f"| {name} | `{uri}` |" for name, uri in manifest.products.items())
    model = plan.model.name or (plan.model.checkpoint or "").rstrip("/").rsplit("/", 1)[-1]
    return (
        f"# detect-scene `{manifest.run_key[:12]}`\n\n"
        f"- optical: `{redact_spec(plan.optical)}`\n- SAR: `{redact_spec(plan.sar)}`\n"
        f"- model: `{model}` (`{manifest.model_digest}`)\n\n"
        + quicklook_image(manifest.products.get("quicklook.png"))
        + "| figure | value |\n| --- | --- |\n"
        f"| threshold | {plan.config.products.threshold} |\n"
        f"| SAR units | {plan.sar_units or plan.config.sar.units} |\n"
        f"| resampling | {plan.resampling or 'none (same grid)'} |\n"
        f"| blocks | {manifest.blocks} |\n| tiles | {manifest.tiles} |\n"
        f"| Mpx | {manifest.mpx:.2f} |\n| time (s) | {manifest.seconds:.1f} |\n"
        f"| changed area (km²) | {area} |\n\n"
        f"| product | location |\n| --- | --- |\n{rows}\n"
    )


def failure_markdown(error: str, optical: str, sar: str) -> str:
    """What a failed run shows in the UI: the one error line, as the CLI prints it."""

    return (
        "# detect-scene failed\n\n"
        f"- optical: `{redact_spec(optical)}`\n- SAR: `{redact_spec(sar)}`\n\n"
        f"**error:** {error}\n"
    )


@flow(
    name="detect-scene",
    log_prints=True,
    persist_result=True,
    result_serializer="json",
)
def detect_scene(
    optical: str,
    sar: str,
    output: str,
    model: str = "promoted",
    overrides: dict[str, Any] | None = None,
    config: str | None = None,
    dask_address: str | None = None,
    registry: str | None = None,
    overwrite: bool = False,
    pre_date: str | None = None,
    post_date: str | None = None,
) -> RunSummary:
    """Detect change between a pre-event optical and a post-event SAR scene.

    A scene is any string `m2cd detect` takes: a raster path or URI (s3://, https://, /vsicurl/,
    gs://, az://), a comma-separated band list (`B02.tif,B03.tif,B04.tif,B08.tif`, `VV.tif,VH.tif`),
    a VRT, or a STAC Item (file or URL).

    Args:
        optical: pre-event optical scene.
        sar: post-event SAR scene.
        output: output prefix (path or s3:// URI) for change.zarr, COGs, polygons, STAC item, quick-look.
        model: checkpoint path/URI, a registry digest, or `promoted` (the registry's promoted model).
        overrides: DetectConfig overrides as dotted keys, e.g. {"tiling.block": 1024}.
        config: a DetectConfig YAML path or a name in configs/pipeline/.
        dask_address: an existing Dask scheduler (else $M2CD_DASK_ADDRESS, else a temporary cluster).
        registry: model registry root (else $M2CD_REGISTRY, else ~/.m2cd/registry).
        overwrite: replace products of another run found at `output`.
        pre_date: optical acquisition (ISO date/time) when the input records none.
        post_date: SAR acquisition (ISO date/time) when the input records none.
    """

    try:
        return _detect_scene(
            optical, sar, output, model, overrides, config, dask_address, registry, overwrite,
            pre_date, post_date,
        )  # fmt: skip
    except M2CDError as exc:  # the one line the CLI would print, in the logs --watch shows
        line = redact(str(exc))
        get_run_logger().error("detect-scene failed: %s", line)
        create_markdown_artifact(
            failure_markdown(line, optical, sar),
            key="detect-scene-summary",
            description="detect-scene failed",
        )
        report_failure(line)
        raise


def report_failure(line: str) -> None:
    """Put the error line where `prefect deployment run --watch` shows it, before the run fails.

    --watch prints the run's events and logs until the Failed state arrives; logs and events
    leave the flow process in batches, so the Failed state won the race and --watch showed only
    "Failed". An event related to the flow run, named by the error line, then a drain of both
    queues, makes the line arrive first.
    """

    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None:
        return
    run_id = str(ctx.flow_run.id)
    emit_event(
        "m2cd.scene.failed",
        resource={"prefect.resource.id": f"m2cd.run.{run_id}", "prefect.resource.name": line},
        related=[
            {
                "prefect.resource.id": f"prefect.flow-run.{run_id}",
                "prefect.resource.role": "flow-run",
            }
        ],
    )
    with contextlib.suppress(Exception):  # service workers are not public API: best effort
        # deferred: not public API; a Prefect without them must still import this module
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        for worker in (APILogWorker, EventsWorker):
            worker.drain_all(timeout=5)


def _detect_scene(
    optical: str,
    sar: str,
    output: str,
    model: str,
    overrides: dict[str, Any] | None,
    config: str | None,
    dask_address: str | None,
    registry: str | None,
    overwrite: bool,
    pre_date: str | None,
    post_date: str | None,
) -> RunSummary:

    logger = get_run_logger()
    started = time.monotonic()
    request = validate_request(
        optical=optical,
        sar=sar,
        out=output,
        checkpoint=resolve_model(model, registry),
        config=load_detect_config(config, overrides or {}),
        overwrite=overwrite,
        pre_date=pre_date,
        post_date=post_date,
    )
    plan = plan_task(request)
    print(plan.describe())
    todo = [] if plan.finished else pending_blocks(plan)
    written = None
    if todo:
        choice = choose_runner(dask_address)
        logger.info(
            "%d of %d block(s) to run on %s", len(todo), len(plan.blocks), choice.describe()
        )
        # the products pass reads each finished block's chunks in this process while the
        # workers run the rest (pipeline.engine.local): at 16384² on 2 cores it was 28 % of the
        # run when it started only after the last block (BENCHMARKS.md)
        with task_runner(choice, _api_url()) as runner:
            written = with_products_pass(
                plan,
                lambda on_done: _run_blocks(runner, plan, todo, logger, on_done),
                defer_pass_error=True,
            )
    elif plan.finished:
        logger.info("run %s already finished in %s: nothing to do", plan.run_key[:12], plan.out)
    summary = finalize_task(plan, written)
    # the run's own summary type, timed over the whole flow (scheduling and workers included)
    manifest = summary.model_copy(update={"seconds": round(time.monotonic() - started, 3)})
    create_markdown_artifact(
        summary_markdown(manifest, plan),
        key="detect-scene-summary",
        description=f"detect-scene {manifest.run_key[:12]}",
    )
    emit_event(
        "m2cd.scene.detected",
        resource={"prefect.resource.id": f"m2cd.run.{manifest.run_key}"},
        payload=manifest.model_dump(mode="json"),
    )
    return manifest
