"""Which Dask cluster runs the block tasks of a detect-scene run.

Order of choice: an explicit address (flow parameter), then ``$M2CD_DASK_ADDRESS``, then a temporary
``LocalCluster`` for this run only (a fresh cluster per run avoids the scheduler memory growth seen on
long-lived shared schedulers, PrefectHQ/prefect#21697). With CUDA there is one single-threaded worker
per GPU advertising the resource ``GPU=1``, and block tasks ask for it, so two blocks never share a GPU;
without CUDA there are CPU workers and no resource request.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import dask
import torch
from pydantic import BaseModel

ADDRESS_ENV = "M2CD_DASK_ADDRESS"


class RunnerChoice(BaseModel):
    """What `choose_runner` decided (logged by the flow so users can see it)."""

    address: str | None = None
    n_workers: int = 1
    threads_per_worker: int = 1
    gpus: int = 0

    def describe(self) -> str:
        """The choice in one line for the flow log: users see which cluster ran their blocks."""
        if self.address:
            return f"existing Dask cluster at {self.address}"
        kind = f"{self.gpus} GPU worker(s) with GPU=1" if self.gpus else "CPU worker(s)"
        return f"temporary LocalCluster: {self.n_workers} {kind}"


def cuda_device_count() -> int:
    """Number of visible GPUs (0 when torch has no CUDA)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def choose_runner(
    address: str | None = None, n_workers: int | None = None, gpus: int | None = None
) -> RunnerChoice:
    """Decide the cluster; pure apart from reading the environment and counting GPUs."""
    address = address or os.environ.get(ADDRESS_ENV) or None
    if address:  # its workers declare their own resources (`dask worker --resources GPU=1`)
        return RunnerChoice(address=address)
    gpus = cuda_device_count() if gpus is None else gpus
    if gpus:
        return RunnerChoice(n_workers=n_workers or gpus, gpus=gpus)
    cpus = os.cpu_count() or 1
    # Torch already uses several threads per forward pass: few workers, one thread each.
    return RunnerChoice(n_workers=n_workers or max(1, min(2, cpus // 2)))


def task_runner(choice: RunnerChoice, api_url: str | None = None) -> Any:
    """A prefect-dask DaskTaskRunner for the choice (not started yet).

    `api_url` is the Prefect API the flow talks to; temporary workers get it so their task runs
    report to the same server (without it each worker would start its own ephemeral server).
    Workers of an existing cluster must be started with PREFECT_API_URL set (docs/OPERATIONS.md).
    """
    # deferred: prefect_dask pulls distributed (+3.0 s); only runs that ask for a Dask cluster pay it
    from prefect_dask import DaskTaskRunner

    if choice.address:
        return DaskTaskRunner(address=choice.address)
    kwargs: dict[str, Any] = {
        "n_workers": choice.n_workers,
        "threads_per_worker": choice.threads_per_worker,
        "processes": True,
        "host": "127.0.0.1",
        "dashboard_address": ":0",  # never collide with another run's dashboard
        "local_directory": os.path.join(tempfile.gettempdir(), "m2cd-dask"),
    }
    if choice.gpus:
        kwargs["resources"] = {"GPU": 1}
    if api_url:
        kwargs["env"] = {"PREFECT_API_URL": api_url}
    return DaskTaskRunner(cluster_kwargs=kwargs)


def block_resources(client: Any) -> dict[str, int] | None:
    """GPU=1 when any worker of the running cluster advertises a GPU, else no request.

    Read from the live cluster rather than this machine, so an existing cluster with GPU workers gets
    GPU-pinned blocks and a CPU-only one never waits for a resource nobody has.
    """
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    has_gpu = any(w.get("resources", {}).get("GPU", 0) >= 1 for w in workers.values())
    return {"GPU": 1} if has_gpu else None


@contextlib.contextmanager
def annotate_resources(resources: dict[str, int] | None) -> Iterator[None]:
    """Annotate submissions made inside (Client.submit merges dask.get_annotations())."""
    if not resources:
        yield
        return

    with dask.annotate(resources=resources):
        yield


def worker_gpu_index(worker_name: object, visible_gpus: int) -> int | None:
    """The GPU a temporary cluster's worker uses: its index (LocalCluster names workers 0..n-1).

    Every worker of a LocalCluster sees every GPU, and "cuda" would put all of them on GPU 0;
    workers started one per GPU with CUDA_VISIBLE_DEVICES (`m2cd serve`, docs/OPERATIONS.md) see
    one GPU and need nothing. None: leave the device as it is.
    """
    if visible_gpus <= 1:
        return None
    try:
        return int(str(worker_name)) % visible_gpus
    except ValueError:
        return None


def pin_worker_gpu() -> None:
    """Set this Dask worker's current CUDA device by `worker_gpu_index` (no-op elsewhere)."""
    if not torch.cuda.is_available():
        return
    # deferred: distributed (+1.5 s) is only imported on a Dask worker, where it is loaded already
    from distributed import get_worker

    try:
        name = get_worker().name
    except ValueError:  # not on a worker (the embedded default runs blocks in-process)
        return
    index = worker_gpu_index(name, torch.cuda.device_count())
    if index is not None:
        torch.cuda.set_device(index)
