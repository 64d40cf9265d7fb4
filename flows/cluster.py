"""The long-lived Dask cluster `m2cd serve` runs beside its Prefect server.

Why: a served `detect-scene` run otherwise starts a temporary LocalCluster (scheduler, workers
that each import torch and the engine, then load the model) and tears it down at the end. On the
2-core development machine that cost was most of a small scene's overhead over the CLI (issue 12:
54 s against 19 s). The served cluster is started once, its workers keep the loaded model between
runs (``pipeline.engine.models`` caches it by digest), and the deployment runner finds it through
``$M2CD_DASK_ADDRESS`` as any existing cluster. Workers are sized as ``flows.runner.choose_runner``
sizes a temporary cluster: with CUDA one single-threaded worker per GPU, each seeing only its own
GPU (``CUDA_VISIBLE_DEVICES``) and advertising ``GPU=1``; without CUDA up to two CPU workers.

The scheduler and workers are plain ``dask scheduler`` / ``dask worker`` processes (the same
commands a multi-machine cluster uses, docs/OPERATIONS.md); their logs go to PREFECT_HOME.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from flows.runner import choose_runner
from pipeline.errors import M2CDError


class ClusterError(M2CDError):
    """The served Dask cluster could not start."""


@dataclass
class ServedCluster:
    """A scheduler and its workers, started by `start_cluster`, stopped by `stop_cluster`."""

    address: str
    scheduler: subprocess.Popen
    workers: list[subprocess.Popen] = field(default_factory=list)

    def describe(self) -> str:
        """One line for the serve log."""
        return f"dask cluster {self.address} ({len(self.workers)} worker process(es))"


def worker_specs(
    scheduler_file: Path, gpus: int, cpu_workers: int
) -> list[tuple[list[str], dict[str, str]]]:
    """(`dask worker` command line, extra environment) per worker process: one per GPU, each
    seeing only its GPU and advertising ``GPU=1``, or one process of ``cpu_workers`` workers."""
    base = [sys.executable, "-m", "distributed.cli.dask_worker", "--scheduler-file"]
    base += [str(scheduler_file), "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"]
    if gpus:
        return [
            (
                [*base, "--resources", "GPU=1", "--name", f"gpu-{i}"],
                {"CUDA_VISIBLE_DEVICES": str(i)},
            )
            for i in range(gpus)
        ]
    return [([*base, "--nworkers", str(cpu_workers)], {})]


def start_cluster(
    home: Path, env: dict[str, str], timeout: float = 120, gpus: int | None = None
) -> ServedCluster:
    """Start the scheduler, then the workers; return once every worker has registered.

    ``env`` is the children's environment (PREFECT_API_URL included, so block tasks report to
    the served API). A process that exits before the cluster is up is reported at once.
    """
    choice = choose_runner(None, gpus=gpus)
    scheduler_file = home / "dask-scheduler.json"
    scheduler_file.unlink(missing_ok=True)
    logs = home / "dask.log"
    with open(logs, "ab") as log:
        scheduler = subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1"]
            + ["--port", "0", "--dashboard-address", ":0", "--scheduler-file", str(scheduler_file)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        cluster = ServedCluster(address="", scheduler=scheduler)
        try:
            for cmd, extra in worker_specs(scheduler_file, choice.gpus, choice.n_workers):
                cluster.workers.append(
                    subprocess.Popen(
                        cmd,
                        env=env | extra,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
            cluster.address = _wait_for_workers(cluster, scheduler_file, choice.n_workers, timeout)
        except BaseException:
            stop_cluster(cluster)
            raise
    return cluster


def _wait_for_workers(
    cluster: ServedCluster, scheduler_file: Path, n_workers: int, timeout: float
) -> str:
    # deferred: distributed's client (+1.5 s) only for `m2cd serve`, not for `m2cd --help`
    from distributed import Client

    deadline = time.monotonic() + timeout
    while not scheduler_file.is_file():
        _check_alive(cluster)
        if time.monotonic() > deadline:
            raise ClusterError(f"dask scheduler wrote no {scheduler_file} in {timeout:.0f} s")
        time.sleep(0.2)
    with Client(scheduler_file=str(scheduler_file), timeout=timeout) as client:
        while len(client.scheduler_info(n_workers=-1).get("workers", {})) < n_workers:
            _check_alive(cluster)
            if time.monotonic() > deadline:
                raise ClusterError(f"{n_workers} dask worker(s) not registered in {timeout:.0f} s")
            time.sleep(0.2)
        try:  # a worker that cannot warm up still runs blocks: it loads on the first one
            client.run(warm_worker)
        except Exception as exc:  # noqa: BLE001 - reported, not fatal
            print(f"dask workers not warmed up ({type(exc).__name__}: {exc})", flush=True)
        return str(client.scheduler.address)


def warm_worker() -> None:
    """Import the engine and load the shipped model on this worker, so the first served run does
    not pay either (measured: 26 s for the first run against 13.5 s for later ones, 2 busy cores).
    A run of another model loads that one on its first block, as before."""
    # deferred: runs on the worker, where these are the block task's own imports
    import flows.detect_scene  # noqa: F401
    from m2cd.pretrained import shipped_checkpoint
    from pipeline.engine.device import resolve_device
    from pipeline.engine.models import describe_model, load_model

    load_model(describe_model(checkpoint=str(shipped_checkpoint())), resolve_device("auto"))


def _check_alive(cluster: ServedCluster) -> None:
    for name, proc in [("scheduler", cluster.scheduler)] + [("worker", w) for w in cluster.workers]:
        if proc.poll() is not None:
            raise ClusterError(f"dask {name} exited with code {proc.returncode} (see dask.log)")


def stop_cluster(cluster: ServedCluster | None, timeout: float = 30) -> None:
    """Workers first (they hand back nothing: results live in the staging store), then the
    scheduler; SIGKILL what does not exit in time."""
    if cluster is None:
        return
    procs = [*cluster.workers, cluster.scheduler]
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
