"""Load check of monitor-region: many small pairs per run, several consecutive runs, one 2-worker
Dask cluster. Records worker/scheduler/server memory per run, checks the Prefect server answers
`/api/health` after every run and that no pair is processed twice.

    .venv/bin/python -m tests.reliability.load --pairs 20 --runs 5 --new-per-run 4

starts its own Prefect server (SQLite, temporary PREFECT_HOME) and prints one JSON object; the
test `test_load.py` calls `run_load` with a smaller size against the session's server.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import yaml

from flows.serve import is_healthy
from tests.reliability.support import SMALL, pair_arrays, write_raster

SCENE = (64, 96)  # one block, two tiles: the orchestration is under load, not the model


def _rss_mib(pid: int | None = None) -> float:
    import psutil

    return round(psutil.Process(pid).memory_info().rss / 2**20, 1)


def add_scenes(prefix: Path, first: int, count: int) -> None:
    """Pairs `first`..`first+count-1`: optical on day 2k, SAR on day 2k+1 (each its own bytes)."""
    start = date(2026, 1, 1)
    for k in range(first, first + count):
        optical, sar = pair_arrays(*SCENE, seed=k)
        day = start + timedelta(days=2 * k)
        write_raster(prefix / "optical" / f"{day:%Y-%m-%d}_s2.tif", optical)
        write_raster(prefix / "sar" / f"{day + timedelta(days=1):%Y-%m-%d}_s1.tif", sar)


def write_region(root: Path, checkpoint: str) -> Path:
    (root / "scenes" / "optical").mkdir(parents=True, exist_ok=True)
    (root / "scenes" / "sar").mkdir(parents=True, exist_ok=True)
    cfg = {
        "name": "loadtest",
        "source": {"kind": "prefix", "uri": str(root / "scenes")},
        "pairing": {"max_days_before": 1.5},
        "output": str(root / "products"),
        "model": checkpoint,
        "overrides": {**SMALL, "tiling.block": 512},
    }
    path = root / "loadtest.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def save_tiny_checkpoint(path: Path) -> str:
    import torch

    import m2cd

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        m2cd.save_checkpoint(m2cd.build_model("tiny"), path)
    return str(path)


def detect_runs_per_pair(api_url: str, pair_ids: set[str]) -> dict[str, int]:
    """How many detect-scene flow runs the server recorded for each of these pairs (by run name)."""
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    client = SyncPrefectClient(api_url)
    runs = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(name=FlowRunFilterName(like_="detect-")), limit=200
    )
    counts = dict.fromkeys(pair_ids, 0)
    for run in runs:
        pair_id = run.name.removeprefix("detect-")
        if pair_id in counts:
            counts[pair_id] += 1
    return counts


def run_load(
    root: Path,
    api_url: str,
    pairs: int,
    runs: int,
    new_per_run: int,
    server_pid: int | None = None,
) -> dict[str, Any]:
    """Run monitor-region `runs` times on one 2-worker cluster; return the figures per run."""
    from flows.monitor_region import monitor_region
    from tests.fixtures.dask import two_worker_cluster

    root.mkdir(parents=True, exist_ok=True)
    region = write_region(root, save_tiny_checkpoint(root / "ck"))
    add_scenes(root / "scenes", 0, pairs)
    total = pairs
    figures: list[dict[str, Any]] = []
    processed_all: list[str] = []
    seen: set[str] = set()
    with two_worker_cluster(root / "dask") as (cluster, client):
        for i in range(runs):
            if i > 0 and new_per_run:
                add_scenes(root / "scenes", total, new_per_run)
                total += new_per_run
            start = time.monotonic()
            summary = monitor_region(region=str(region), dask_address=cluster.scheduler_address)
            processed_all += summary.processed
            seen.update(p.pair_id for p in summary.pairs)
            client.run(__import__("gc").collect)
            workers = sorted(client.run(_rss_mib).values())
            figures.append(
                {
                    "run": i + 1,
                    "pairs_seen": len(summary.pairs),
                    "processed": len(summary.processed),
                    "skipped": len(summary.skipped),
                    "failed": len(summary.failed),
                    "seconds": round(time.monotonic() - start, 1),
                    "worker_rss_mib": workers,
                    "scheduler_rss_mib": client.run_on_scheduler(_rss_mib),
                    "flow_process_rss_mib": _rss_mib(),
                    "server_rss_mib": _rss_mib(server_pid) if server_pid else None,
                    "server_healthy": is_healthy(api_url, timeout=10),
                }
            )
    return {
        "pairs_total": total,
        "processed_total": len(processed_all),
        "processed_twice": sorted({p for p in processed_all if processed_all.count(p) > 1}),
        "detect_runs_per_pair": detect_runs_per_pair(api_url, seen),
        "runs": figures,
    }


def main() -> None:
    import subprocess
    import sys
    import tempfile

    from flows.serve import stop, wait_healthy
    from tests.fixtures.prefect import free_port, prefect_base_env

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--new-per-run", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="m2cd-load-") as tmp:
        home, port = Path(tmp) / "prefect", free_port()
        home.mkdir()
        api_url = f"http://127.0.0.1:{port}/api"
        env = prefect_base_env(home)
        cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
               "--port", str(port), "--analytics-off"]  # fmt: skip
        with open(home / "server.log", "wb") as log:
            server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_healthy(api_url, server, timeout=90)
            os.environ.update(prefect_base_env(home, api_url))
            result = run_load(Path(tmp) / "work", api_url, args.pairs, args.runs,
                              args.new_per_run, server.pid)  # fmt: skip
        finally:
            stop(server, "prefect server", timeout=20)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
