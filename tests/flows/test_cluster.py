"""The long-lived Dask cluster of `m2cd serve`: one worker per GPU, real processes that run
tasks, stopped with the service."""

from __future__ import annotations

import os
from pathlib import Path

from distributed import Client

from flows.cluster import start_cluster, stop_cluster, worker_specs
from flows.runner import ADDRESS_ENV, choose_runner


def test_each_gpu_gets_a_worker_that_sees_only_that_gpu():
    specs = worker_specs(Path("sched.json"), gpus=2, cpu_workers=2)
    assert [extra for _, extra in specs] == [
        {"CUDA_VISIBLE_DEVICES": "0"},
        {"CUDA_VISIBLE_DEVICES": "1"},
    ]
    for cmd, _ in specs:
        assert cmd[cmd.index("--resources") + 1] == "GPU=1"
        assert cmd[cmd.index("--nthreads") + 1] == "1"
    ((cpu_cmd, cpu_env),) = worker_specs(Path("sched.json"), gpus=0, cpu_workers=2)
    assert cpu_cmd[cpu_cmd.index("--nworkers") + 1] == "2" and "--resources" not in cpu_cmd
    assert cpu_env == {}


def test_served_cluster_runs_tasks_on_every_worker_and_stops(tmp_path, monkeypatch):
    monkeypatch.delenv(ADDRESS_ENV, raising=False)
    env = dict(os.environ) | {"OMP_NUM_THREADS": "1"}
    cluster = start_cluster(tmp_path, env, timeout=300, gpus=0)
    try:
        with Client(cluster.address, timeout=60) as client:
            workers = client.scheduler_info(n_workers=-1)["workers"]
            assert len(workers) == choose_runner(None, gpus=0).n_workers
            assert client.submit(sum, [1, 2, 3]).result(timeout=60) == 6
            pids = set(client.run(os.getpid).values())
            assert len(pids) == len(workers)  # worker processes, not threads of one
            # warmed up: the shipped model is already loaded on every worker
            cached = client.run(
                lambda: len(__import__("pipeline.engine.models").engine.models._cache)
            )
            assert set(cached.values()) == {1}
    finally:
        stop_cluster(cluster)
    assert cluster.scheduler.poll() is not None
    assert all(w.poll() is not None for w in cluster.workers)
