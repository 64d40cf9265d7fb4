"""monitor-region: find new optical→SAR pairs of a region and run detect-scene on each unprocessed one.

State lives beside the products, so any machine can resume it: `OUT/<pair-id>/pair.json` is written
only after that pair's detect-scene run completed, and a pair with one is skipped. The regional summary
(`OUT/summary.json`, `OUT/summary.csv`, and Prefect artifacts) is rebuilt from those files each run.

Each pair runs as a **subflow** by default: it needs no deployment, works on the embedded default, and
its blocks go to the same Dask cluster choice as any detect-scene run. With `deployment` set (e.g.
`detect-scene/local`) each pair is instead a separate flow run of that deployment (`run_deployment`),
so pairs can run on another work pool or machine (e.g. a GPU pool) and show up as their own runs.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.deployments import run_deployment
from pydantic import BaseModel

from flows.detect_scene import detect_scene
from pipeline.catalog import Pair, RegionConfig, discover, load_region, pair_scenes
from pipeline.engine.finalize import RunSummary
from pipeline.errors import M2CDError
from pipeline.io import storage
from pipeline.io.paths import child, resolve_output
from pipeline.io.remote import redact_spec

PAIR_RECORD = "pair.json"


class PairRecord(BaseModel):
    """One processed pair (the content of OUT/<pair-id>/pair.json)."""

    pair_id: str
    optical: str
    sar: str
    optical_datetime: str
    sar_datetime: str
    output: str
    run_key: str
    changed_km2: float | None
    products: dict[str, str]
    finished_at: str


class RegionSummary(BaseModel):
    """What a monitor-region run returns: every processed pair and what this run did."""

    region: str
    pairs: list[PairRecord]
    processed: list[str]
    skipped: list[str]
    unpaired_sar: list[str]
    failed: dict[str, str]


class RegionRunError(M2CDError):
    """Some pairs failed; the others are recorded and the failed ones are retried next time."""


def pair_output(region: RegionConfig, pair: Pair) -> str:
    """Where a pair's products go: one folder per pair id under the region's output, so reruns find
    and skip finished pairs."""
    return child(region.output, pair.id, what="pair id")  # an id can never climb out


def read_record(region: RegionConfig, pair: Pair) -> PairRecord | None:
    """The record a finished pair left (None if it never finished): its presence is what makes a
    rerun skip the pair."""
    uri = storage.join(pair_output(region, pair), PAIR_RECORD)
    if not storage.exists(uri):
        return None
    return PairRecord.model_validate_json(storage.read_bytes(uri))


def write_record(region: RegionConfig, pair: Pair, manifest: RunSummary) -> PairRecord:
    """Write the pair's record after its products are published, so a pair with a record always has
    products."""
    record = PairRecord(
        pair_id=pair.id,
        optical=pair.optical.uri,
        sar=pair.sar.uri,
        optical_datetime=pair.optical.datetime.isoformat(),
        sar_datetime=pair.sar.datetime.isoformat(),
        output=manifest.out,
        run_key=manifest.run_key,
        changed_km2=manifest.changed_km2,
        products=manifest.products,
        finished_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    uri = storage.join(pair_output(region, pair), PAIR_RECORD)
    storage.write_bytes_atomic(uri, record.model_dump_json(indent=2).encode())
    return record


def summary_csv(records: list[PairRecord]) -> str:
    """The region's pairs as CSV for the Prefect table artifact and for spreadsheets."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["pair", "optical", "sar", "changed_km2", "output"])
    for r in records:
        writer.writerow([r.pair_id, r.optical, r.sar, r.changed_km2, r.output])
    return buf.getvalue()


def summary_markdown(summary: RegionSummary) -> str:
    """The region run as the markdown artifact Prefect's UI shows: counts first, then one row per
    pair."""
    lines = [
        f"# monitor-region `{summary.region}`",
        "",
        f"processed now: {len(summary.processed)}, already done: {len(summary.skipped)}, "
        f"failed: {len(summary.failed)}, SAR scenes without optical: {len(summary.unpaired_sar)}",
        "",
        "| pair | changed km² | products |",
        "| --- | --- | --- |",
    ]
    for r in summary.pairs:
        area = "n/a" if r.changed_km2 is None else f"{r.changed_km2:.4f}"
        lines.append(f"| {r.pair_id} | {area} | `{r.output}` |")
    for pair_id, error in summary.failed.items():
        lines.append(f"| {pair_id} | failed | {error} |")
    return "\n".join(lines) + "\n"


@task(name="find-pairs", retries=2, retry_delay_seconds=5)
def find_pairs(region: RegionConfig) -> tuple[list[Pair], list[str]]:
    """List the region's scenes and pair them (latest optical within N days before each SAR)."""
    catalog = discover(region)
    pairs, unpaired = pair_scenes(catalog.scenes, region.pairing.max_days_before)
    return pairs, [s.uri for s in unpaired]


def _run_pair(
    region: RegionConfig, pair: Pair, deployment: str | None, params: dict[str, Any]
) -> RunSummary:
    parameters = {
        "optical": pair.optical.uri,
        "sar": pair.sar.uri,
        "output": pair_output(region, pair),
        # the catalog's acquisition times land in the products (STAC start/end_datetime)
        "pre_date": pair.optical.datetime.isoformat(),
        "post_date": pair.sar.datetime.isoformat(),
        "model": region.model,
        "overrides": region.overrides,
        **{k: v for k, v in params.items() if v is not None},
    }
    if deployment is None:
        return detect_scene.with_options(flow_run_name=f"detect-{pair.id}")(**parameters)

    flow_run = run_deployment(deployment, parameters=parameters, flow_run_name=f"detect-{pair.id}")
    if not flow_run.state or not flow_run.state.is_completed():
        raise RuntimeError(f"{deployment} run {flow_run.name} ended {flow_run.state}")
    return RunSummary.model_validate(flow_run.state.result())


@flow(name="monitor-region", log_prints=True, persist_result=True, result_serializer="json")
def monitor_region(
    region: str,
    deployment: str | None = None,
    dask_address: str | None = None,
    registry: str | None = None,
) -> RegionSummary:
    """Run detect-scene for each new pair of a region and write the regional summary.

    Args:
        region: a region name in configs/regions/ or a YAML path.
        deployment: run each pair as a run of this deployment (e.g. detect-scene/local) instead of
            a subflow.
        dask_address: Dask scheduler for the subflows (else $M2CD_DASK_ADDRESS or a temporary one).
        registry: model registry root for `model: promoted`.
    """
    logger = get_run_logger()
    cfg = load_region(region)

    cfg = cfg.model_copy(update={"output": resolve_output(cfg.output)})  # inside $M2CD_OUTPUT_ROOT
    pairs, unpaired = find_pairs(cfg)
    records: list[PairRecord] = []
    processed, skipped, failed = [], [], {}
    for pair in pairs:
        existing = read_record(cfg, pair)
        if existing is not None:
            skipped.append(pair.id)
            records.append(existing)
            continue
        logger.info(
            "pair %s: %s + %s", pair.id, redact_spec(pair.optical.uri), redact_spec(pair.sar.uri)
        )
        try:
            manifest = _run_pair(
                cfg, pair, deployment, {"dask_address": dask_address, "registry": registry}
            )
        except Exception as exc:  # one bad pair must not stop the others
            logger.error("pair %s failed: %s", pair.id, exc)
            failed[pair.id] = f"{type(exc).__name__}: {exc}"
            continue
        records.append(write_record(cfg, pair, manifest))
        processed.append(pair.id)
    summary = RegionSummary(
        region=cfg.name,
        pairs=records,
        processed=processed,
        skipped=skipped,
        unpaired_sar=unpaired,
        failed=failed,
    )
    storage.write_json(storage.join(cfg.output, "summary.json"), summary.model_dump(mode="json"))
    storage.write_bytes_atomic(
        storage.join(cfg.output, "summary.csv"), summary_csv(records).encode()
    )
    create_markdown_artifact(summary_markdown(summary), key=f"region-{cfg.name.replace('_', '-')}")
    create_table_artifact(
        [{"pair": r.pair_id, "changed_km2": r.changed_km2, "output": r.output} for r in records],
        key=f"region-{cfg.name.replace('_', '-')}-pairs",
    )
    if failed:
        raise RegionRunError(
            f"{cfg.name}: {len(failed)} pair(s) failed ({', '.join(failed)}); "
            "they are retried on the next run"
        )
    return summary
