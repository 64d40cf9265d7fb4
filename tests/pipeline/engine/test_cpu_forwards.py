"""How a CPU run shares the cores: how many forwards at once, each on one intra-op thread."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import torch

from pipeline.engine.cpu_forwards import concurrent_forwards, one_thread_forwards, set_one_thread

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_auto_gives_a_cpu_run_one_forward_per_core_shared_among_its_blocks():
    assert concurrent_forwards("auto", CPU, cores=2) == 2
    assert concurrent_forwards("auto", CPU, block_threads=2, cores=2) == 1
    assert concurrent_forwards("auto", CPU, block_threads=3, cores=16) == 5
    assert concurrent_forwards("auto", CPU, block_threads=4, cores=2) == 1  # never none
    assert concurrent_forwards("auto", CUDA, cores=16) == 1  # the device serialises its kernels
    assert concurrent_forwards(3, CPU, cores=2) == 3  # an explicit count is kept
    assert concurrent_forwards(2, CUDA, cores=2) == 2


def in_new_thread(fn):
    out = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join(10)
    return out[0]


def test_each_run_forwards_on_one_thread_and_every_thread_gets_its_count_back():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        inside, release, seen = threading.Event(), threading.Event(), []

        def other_run() -> None:
            with one_thread_forwards(CPU):
                seen.append(torch.get_num_threads())
                inside.set()
                release.wait(10)
                seen.append(torch.get_num_threads())
            seen.append(torch.get_num_threads())

        t = threading.Thread(target=other_run)
        with one_thread_forwards(CPU):
            assert torch.get_num_threads() == 1
            t.start()
            assert inside.wait(10)
        assert torch.get_num_threads() == 2  # this run is done; the other is still inside
        release.set()
        t.join(10)
        assert seen == [1, 1, 2]  # the other run kept its one thread until it left
        assert in_new_thread(torch.get_num_threads) == 2  # fresh threads start from the default
        with ThreadPoolExecutor(2, initializer=set_one_thread) as pool:  # a pool of forwards
            assert set(pool.map(lambda _: torch.get_num_threads(), range(4))) == {1}
        with one_thread_forwards(CUDA):  # a GPU run leaves the CPU threads alone
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
