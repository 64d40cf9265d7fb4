"""Finalize a run: products from the complete store, published into OUT, `OUT/run.json` last.

Publishing is the protocol of `pipeline.engine.publish`: until `run.json` names the run it is not
committed, and a crash anywhere here leaves a staging run that the same command finalizes again
(products rewritten before the intent is recorded, the publish completed after).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np
from pydantic import BaseModel

from pipeline.engine import publish
from pipeline.engine.block import BlockResult, block_marker, pending_blocks
from pipeline.engine.block_gate import BlockGate
from pipeline.engine.crash_points import crash_point
from pipeline.engine.output_grid import crs_label
from pipeline.engine.plan import STORE, RunPlan, read_manifest
from pipeline.engine.routing import routing_shares
from pipeline.engine.stage_times import stage
from pipeline.errors import InputError, M2CDError, OutputExistsError
from pipeline.io import storage
from pipeline.io.remote import redact_spec
from pipeline.io.sources import resolve_input
from pipeline.products import ProductMetadata, write_products
from pipeline.products.diagnostics import RoutingBlock
from pipeline.products.model_info import model_info


class RunIncompleteError(M2CDError):
    """finalize_run was called before every block was marked done."""


class RunSummary(BaseModel):
    """What a finished run produced (also `OUT/run.json`, minus `already_finished`)."""

    run_key: str
    out: str
    shape: tuple[int, int]
    crs: str | None
    tiles: int
    tiles_run: int
    tiles_skipped: int
    blocks: int
    blocks_resumed: int
    mpx: float
    seconds: float
    valid_px: int
    changed_px: int
    changed_km2: float | None
    model_digest: str
    config_hash: str
    products: dict[str, str]
    # products.diagnostics: per MoE stage, each expert's share of the valid pixels per modality
    routing: list[dict[str, Any]] | None = None
    already_finished: bool = False


def _product_metadata(plan: RunPlan) -> ProductMetadata:
    return ProductMetadata(
        crs=plan.grid.crs_wkt,
        transform=plan.grid.transform,
        shape=(plan.grid.height, plan.grid.width),
        optical_uri=plan.optical,
        sar_uri=plan.sar,
        optical_gdal_path=resolve_input(plan.optical, "optical").gdal_path,
        sar_gdal_path=resolve_input(plan.sar, "sar").gdal_path,
        optical_bands=plan.config.optical.bands,
        model_digest=plan.model.digest,
        model_name=plan.model.name or os.path.basename((plan.model.checkpoint or "").rstrip("/")),
        config_hash=plan.config_hash,
        run_key=plan.run_key,
        resampling=plan.resampling,
        sar_units=plan.sar_units or plan.config.sar.units,
        model=model_info(
            plan.model.checkpoint, plan.model.name, plan.model.digest, plan.config, plan.sar_units
        ),
        optical_datetime=plan.optical_datetime,
        sar_datetime=plan.sar_datetime,
        created=plan.created,
    )


def _routing_summary(results: list[BlockResult]) -> list[dict[str, Any]]:
    """Expert shares per stage and modality over the scene's valid pixels (the blocks' counts
    summed: integers, so the same for any block size)."""
    counts = [r.routing_counts for r in results if r.routing_counts is not None]
    total = np.sum(np.asarray(counts, dtype=np.int64), axis=0)
    return routing_shares(total.tolist())


def summary_from_manifest(manifest: dict[str, Any]) -> RunSummary:
    """The summary a finished run recorded in `OUT/run.json` (marked `already_finished`)."""
    return RunSummary(**{**manifest["summary"], "already_finished": True})


def finalize_run(
    plan: RunPlan,
    seconds: float | None = None,
    blocks_resumed: int = 0,
    before_publish: Callable[[], None] | None = None,
    written: RunSummary | None = None,
) -> RunSummary:
    """Write the products from the complete store and publish them; `OUT/run.json` last.

    A finished run (same key in `OUT/run.json`) returns its summary untouched; a publish that was
    interrupted is completed with the summary it recorded. `before_publish` runs right before
    anything in OUT changes (the CLI checks its writer lease there). `written`: the products are
    already in staging, written by `write_run_products` beside the blocks (`pipeline.engine.local`).
    Raises RunIncompleteError naming the missing blocks when some are not done.
    """
    manifest = read_manifest(plan.out)
    if manifest is not None and manifest.get("run_key") == plan.run_key:
        publish.remove_staging(plan)  # left by a crash right after the commit
        return summary_from_manifest(manifest)
    intent = publish.read_intent(plan)
    if intent is None:
        if manifest is not None and not plan.overwrite:  # another run finished meanwhile
            raise OutputExistsError(f"{plan.out}: holds products of run {manifest.get('run_key')}")
        summary = write_run_products(plan) if written is None else written
        if before_publish is not None:
            before_publish()
        names = [os.path.basename(u.rstrip("/")) for u in summary.products.values()]
        intent = publish.write_intent(plan, names, summary.model_dump(mode="json"))
    elif before_publish is not None:
        before_publish()
    publish.put_in_place(plan, intent["names"])
    # the products' figures as recorded; how this call got there (a completed publish) as is
    summary = RunSummary(**intent["summary"]).model_copy(update={"blocks_resumed": blocks_resumed})
    if seconds is not None:
        summary = summary.model_copy(update={"seconds": round(seconds, 3)})
    publish.commit(
        plan,
        {
            "format": "m2cd-run/1",
            "run_key": plan.run_key,
            "created": plan.created.isoformat(),
            "finished": datetime.now(UTC).isoformat(),
            "summary": summary.model_dump(mode="json"),
            "plan": plan.model_dump(mode="json", exclude={"blocks"})
            | {"optical": redact_spec(plan.optical), "sar": redact_spec(plan.sar)},
        },
    )
    return summary


def products_pending(plan: RunPlan) -> bool:
    """Whether finalizing this run still has products to write: not when it is committed, nor
    when an interrupted publish recorded them (its intent)."""
    manifest = read_manifest(plan.out)
    if manifest is not None and manifest.get("run_key") == plan.run_key:
        return False
    return publish.read_intent(plan) is None


def _block_results(plan: RunPlan) -> list[BlockResult]:
    """Every block's recorded result; refuses a run with a block not done or no valid pixel."""
    missing = pending_blocks(plan)
    if missing:
        listed = ", ".join(plan.blocks[i].name for i in missing[:5])
        raise RunIncompleteError(
            f"{plan.staging}: {len(missing)} of {len(plan.blocks)} block(s) not done ({listed}...)"
        )
    results = [BlockResult(**(block_marker(plan, b) or {})) for b in plan.blocks]
    if not any(r.valid_px for r in results):  # empty products would read as "no change"
        storage.remove(plan.staging, recursive=True)
        raise InputError(
            f"{plan.optical} and {plan.sar}",
            "no valid pixel in the overlap: every pixel is nodata (or zero fill / NaN) in one "
            "scene or the other; check the scenes' nodata values and footprints",
        )
    return results


def write_run_products(plan: RunPlan, gate: BlockGate | None = None) -> RunSummary:
    """Step 1 of the publish: every product into staging, and the summary they make.

    Without `gate` every block must be done already. With it, the pass runs beside the block
    phase and reads each chunk once its block is done (`pipeline.engine.block_gate`); the blocks'
    results are checked when the pass ends, and a stopped block phase stops it (BlocksStopped).
    """
    results = None
    if gate is None:
        results = _block_results(plan)
        crash_point("finalize")  # with a gate, the caller's, once the blocks are done
    start = time.perf_counter()
    diagnostics = plan.config.products.diagnostics
    routing = (
        [RoutingBlock(b.y0, b.x0, plan.routing_uri(b)) for b in plan.blocks]
        if diagnostics
        else None
    )
    with stage("finalize"):
        written = write_products(
            plan.store_uri,
            plan.staging,
            _product_metadata(plan),
            plan.config.products,
            routing,
            gate,
        )
    if results is None:
        results = _block_results(plan)
    crash_point("products-written")
    # the store last: the products are read from it until the end
    names = [os.path.basename(u.rstrip("/")) for u in written.values()] + [STORE]
    km2 = [r.changed_km2 for r in results]
    block_seconds = sum(r.seconds for r in results)
    return RunSummary(
        run_key=plan.run_key,
        out=plan.out,
        shape=(plan.grid.height, plan.grid.width),
        crs=crs_label(plan.grid.crs_wkt) if plan.grid.crs_wkt else None,
        tiles=plan.tiles,
        tiles_run=sum(r.tiles_run for r in results),
        tiles_skipped=sum(r.tiles_skipped for r in results),
        blocks=len(plan.blocks),
        blocks_resumed=0,  # how this call got here is finalize_run's to say
        mpx=round(plan.grid.height * plan.grid.width / 1e6, 4),
        # blocks plus products; the caller who timed the whole run overrides it (finalize_run)
        seconds=round(block_seconds + time.perf_counter() - start, 3),
        valid_px=sum(r.valid_px for r in results),
        changed_px=sum(r.changed_px for r in results),
        changed_km2=(
            None if any(v is None for v in km2) else round(sum(v for v in km2 if v is not None), 6)
        ),
        model_digest=plan.model.digest,
        config_hash=plan.config_hash,
        products={name: storage.join(plan.out, name) for name in names},
        routing=_routing_summary(results) if diagnostics else None,
    )
