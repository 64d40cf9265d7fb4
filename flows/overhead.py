"""`m2cd bench serve`: what a served detect-scene run costs over the same scene through the CLI.

Both are timed as a user types them, in the same run: `m2cd detect A B --out O` against
`prefect deployment run detect-scene/local -p … --watch` on an `m2cd serve` started beforehand
(its start-up is not counted: a service is started once). The served runs are timed with the
long-lived cluster `m2cd serve` keeps (the default) and, as the baseline of the change, with
`--no-cluster` (a temporary LocalCluster per run, the behaviour before). The first served run of
each is reported apart: its workers load the model; later runs find it loaded.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import typer

from flows.serve import is_healthy, stop


def _timed(cmd: list[str], env: dict[str, str], timeout: float = 900) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])}… failed:\n{(done.stdout + done.stderr)[-2000:]}")
    return time.perf_counter() - start


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _served_runs(
    work: Path, env: dict[str, str], scene: Any, repeats: int, cluster: bool
) -> list[float]:
    """Start `m2cd serve`, wait for its deployments, time ``repeats`` deployment runs."""
    # deferred: the Prefect client (+1 s) only when the bench runs, not for `m2cd --help`
    from prefect.client.orchestration import SyncPrefectClient

    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    home = work / f"home-{'cluster' if cluster else 'nocluster'}"
    cmd = [sys.executable, "-m", "flows.cli", "serve", "--port", str(port), "--home", str(home)]
    cmd += ["--startup-timeout", "600", "--cluster" if cluster else "--no-cluster"]
    log = open(work / f"serve-{port}.log", "w")  # noqa: SIM115 - closed in finally
    serve = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and serve.poll() is None:
            if is_healthy(api) and any(
                d.name == "local" for d in SyncPrefectClient(api).read_deployments()
            ):
                break
            time.sleep(1)
        else:
            raise RuntimeError(f"m2cd serve did not come up (log {log.name})")
        client_env = env | {"PREFECT_API_URL": api}
        times = []
        for i in range(repeats):
            run = [sys.executable, "-m", "prefect", "deployment", "run", "detect-scene/local"]
            run += ["--watch", "-p", f"optical={scene.optical}", "-p", f"sar={scene.sar}"]
            run += ["-p", f"output={work / f'served-{port}-{i}'}"]
            times.append(_timed(run, client_env))
        return times
    finally:
        stop(serve, "m2cd serve", timeout=60)
        log.close()


def run(size: int = 256, repeats: int = 3) -> dict[str, Any]:
    """Median seconds of the CLI and of served runs (with and without the served cluster)."""
    # deferred: rasterio (through synth) is not loaded by `m2cd --help`
    from pipeline.bench.machine import machine_info
    from pipeline.synth import synth_pair

    with tempfile.TemporaryDirectory(prefix="m2cd-bench-serve-") as tmp:
        work = Path(tmp)
        scene = synth_pair(work / "scene", size=(size, size), seed=3, sar_bands=1)
        env = dict(os.environ) | {
            "HOME": str(work / "user"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
        env.pop("PREFECT_API_URL", None)
        load_before = os.getloadavg()[0]
        cli = [
            _timed(
                [sys.executable, "-m", "flows.cli", "detect", str(scene.optical), str(scene.sar)]
                + ["--out", str(work / f"cli-{i}")],
                env,
            )
            for i in range(repeats)
        ]
        with_cluster = _served_runs(work, env, scene, repeats + 1, cluster=True)
        without = _served_runs(work, env, scene, repeats + 1, cluster=False)
    cli_s = statistics.median(cli)
    served_s = statistics.median(with_cluster[1:])
    before_s = statistics.median(without[1:])
    return {
        "scene_px": size * size,
        "repeats": repeats,
        "cli_s": round(cli_s, 2),
        "served_s": round(served_s, 2),
        "served_first_s": round(with_cluster[0], 2),
        "served_no_cluster_s": round(before_s, 2),
        "served_no_cluster_first_s": round(without[0], 2),
        "overhead_s": round(served_s - cli_s, 2),
        "overhead_no_cluster_s": round(before_s - cli_s, 2),
        "times": {"cli": cli, "served": with_cluster, "served_no_cluster": without},
        "loadavg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "machine": machine_info(),
    }


def format_table(r: dict[str, Any]) -> str:
    """Human-readable summary of ``run``'s result."""
    return (
        f"{r['scene_px']} px scene, median of {r['repeats']} (load {r['loadavg_1min']})\n"
        f"CLI {r['cli_s']:.1f} s; served {r['served_s']:.1f} s (first {r['served_first_s']:.1f} s), "
        f"overhead {r['overhead_s']:+.1f} s (goal < 5 s); without the served cluster "
        f"{r['served_no_cluster_s']:.1f} s, overhead {r['overhead_no_cluster_s']:+.1f} s"
    )


def bench_serve(
    size: int = typer.Option(256, "--size", min=64, help="Scene side in pixels (one block)."),
    repeats: int = typer.Option(3, "--repeats", min=1),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Served detect-scene vs the CLI on a one-block scene (orchestration overhead)."""
    result = run(size, repeats)
    typer.echo(json.dumps(result) if as_json else format_table(result))
