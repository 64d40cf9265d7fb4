"""The staging runs kept under `OUT/.m2cd/<run key>/`: what they hold, how old they are, and the
sweep that removes the ones nobody resumed (`output.staging_max_age_days`, 7 by default).

A staging run's age is the time since its last sign of life: `plan.json` (rewritten by every run
that opens it), a block marker or the publish intent; the Zarr chunks are not listed (thousands of
objects on S3 for a big scene). Callers hold the output's writer lease, so no run is writing one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pipeline.engine.plan import STAGING_DIR
from pipeline.engine.publish import INTENT
from pipeline.io import storage

DAY_S = 86_400.0


@dataclass(frozen=True)
class StagingRun:
    """One run's staging folder and what it tells about the run."""

    key: str
    uri: str
    age_s: float
    blocks_done: int
    blocks_total: int | None
    publishing: bool

    def describe(self) -> str:
        """One line for `m2cd clean` and the sweep's log."""
        total = "?" if self.blocks_total is None else self.blocks_total
        state = "half-published" if self.publishing else f"{self.blocks_done}/{total} blocks done"
        return f"{self.uri}: {state}, last touched {self.age_s / DAY_S:.1f} days ago"


def _mtime(entry: dict[str, Any]) -> float | None:
    value = entry.get("mtime") or entry.get("LastModified") or entry.get("last_modified")
    if isinstance(value, datetime):
        return value.timestamp()
    return float(value) if isinstance(value, int | float) else None


def _listing(uri: str) -> list[dict[str, Any]]:
    try:
        return list(storage.fs_for(uri).ls(uri, detail=True))
    except FileNotFoundError:
        return []


def _describe(uri: str, key: str, now: float) -> StagingRun:
    top = _listing(uri)
    markers = [e for e in _listing(storage.join(uri, "blocks")) if e["name"].endswith(".json")]
    stamps = [t for e in (*top, *markers) if (t := _mtime(e)) is not None]
    names = {e["name"].rstrip("/").rsplit("/", 1)[-1] for e in top}
    plan = storage.read_json(storage.join(uri, "plan.json"), missing_ok=True) or {}
    blocks = plan.get("blocks")
    return StagingRun(
        key=key,
        uri=uri,
        age_s=max(now - max(stamps), 0.0) if stamps else 0.0,
        blocks_done=len(markers),
        blocks_total=len(blocks) if isinstance(blocks, list) else None,
        publishing=INTENT in names,
    )


def list_staging(out: str) -> list[StagingRun]:
    """Every staging run under `out` (oldest first)."""
    root = storage.join(out, STAGING_DIR)
    now = time.time()
    runs = []
    for entry in _listing(root):
        key = entry["name"].rstrip("/").rsplit("/", 1)[-1]
        if entry.get("type") == "directory":
            runs.append(_describe(storage.join(root, key), key, now))
    return sorted(runs, key=lambda r: -r.age_s)


def sweep_stale(out: str, max_age_days: float, keep: str) -> list[StagingRun]:
    """Remove the staging runs of `out` untouched for `max_age_days`, except run `keep`."""
    stale = [r for r in list_staging(out) if r.key != keep and r.age_s > max_age_days * DAY_S]
    for run in stale:
        storage.remove(run.uri, recursive=True)
    return stale
