"""The Dask runner choice: explicit address, $M2CD_DASK_ADDRESS, or a temporary cluster sized by GPUs."""

from __future__ import annotations

import pytest

from flows.runner import (
    ADDRESS_ENV,
    block_resources,
    choose_runner,
    task_runner,
    worker_gpu_index,
)


def test_address_parameter_wins_over_environment(monkeypatch):
    monkeypatch.setenv(ADDRESS_ENV, "tcp://10.0.0.1:8786")
    assert choose_runner("tcp://10.0.0.2:8786").address == "tcp://10.0.0.2:8786"
    assert choose_runner().address == "tcp://10.0.0.1:8786"
    assert task_runner(choose_runner()).address == "tcp://10.0.0.1:8786"


def test_temporary_cluster_has_one_gpu_worker_per_gpu(monkeypatch):
    monkeypatch.delenv(ADDRESS_ENV, raising=False)
    choice = choose_runner(gpus=2)
    runner = task_runner(choice, api_url="http://127.0.0.1:4200/api")
    kwargs = runner.cluster_kwargs
    assert (kwargs["n_workers"], kwargs["threads_per_worker"]) == (2, 1)
    assert kwargs["resources"] == {"GPU": 1}
    assert kwargs["env"] == {"PREFECT_API_URL": "http://127.0.0.1:4200/api"}
    cpu = task_runner(choose_runner(gpus=0)).cluster_kwargs
    assert "resources" not in cpu and cpu["host"] == "127.0.0.1"


@pytest.mark.parametrize(("resources", "expected"), [({"GPU": 1}, {"GPU": 1}), (None, None)])
def test_blocks_ask_for_a_gpu_only_when_the_cluster_has_one(resources, expected):
    from distributed import Client, LocalCluster

    kwargs = {"resources": resources} if resources else {}
    with (
        LocalCluster(n_workers=1, processes=False, dashboard_address=":0", **kwargs) as cluster,
        Client(cluster) as client,
    ):
        assert block_resources(client) == expected


def test_temporary_cluster_workers_spread_over_the_gpus():
    """LocalCluster workers (named 0..n-1) each see every GPU: worker k takes GPU k, not all GPU 0;
    a worker that sees one GPU (CUDA_VISIBLE_DEVICES) or has another name is left alone."""
    assert [worker_gpu_index(k, 2) for k in (0, 1, 2, 3)] == [0, 1, 0, 1]
    assert worker_gpu_index("1", 4) == 1
    assert worker_gpu_index(0, 1) is None and worker_gpu_index("gpu-0", 2) is None
