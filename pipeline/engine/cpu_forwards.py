"""How a CPU run shares the cores with the model: several one-thread forwards at once.

One forward on every core (torch's intra-op threads) stalls at each operator's thread barrier
whenever the reader, the blend or the products pass takes a core for a moment; forwards of one
thread each never wait for one another. Measured on the 2-core Xeon (MiT-b0 bf16, 4096² synthetic
scene, BENCHMARKS.md): the model alone 11.13 s as 2 one-thread forwards at once against 12.58 s
one batch at a time on two threads; a whole detect, 4 alternating rounds against the engine before
this module, median 21.1 s against 23.7 s.

Bits: CPU kernels split their reductions by the intra-op thread count, so a forward's output
depends on it. Every CPU forward of the engine runs on exactly one thread, so the products are
the same bits for any number of concurrent forwards, block workers, and cores of the machine.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch

_lock = threading.Lock()
_holders = 0
_saved_threads = 0
_pools: dict[int, ThreadPoolExecutor] = {}


def usable_cores() -> int:
    """Cores this process may run on (its affinity), not the host's count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def concurrent_forwards(
    setting: int | str, device: torch.device, block_threads: int = 1, cores: int | None = None
) -> int:
    """Forwards one block keeps running at once: `auto` gives a CPU run one per core, shared
    among the blocks running at the same time in this process; a GPU runs one (the device
    serialises its kernels; the host work overlaps through the read-ahead instead)."""
    if setting != "auto":
        return int(setting)
    if device.type != "cpu":
        return 1
    return max(1, (cores if cores is not None else usable_cores()) // max(1, block_threads))


@contextmanager
def one_thread_forwards(device: torch.device) -> Iterator[None]:
    """The calling thread's CPU forwards on one intra-op thread inside the `with`.

    Torch's count is per thread once a thread has run an operator (OpenMP keeps it per thread;
    torch's own default, which fresh threads start from, is process-wide). So each thread sets
    its own, the pools of forwards set theirs (`set_one_thread`), and every thread leaving puts
    back the count from before the first of the runs in this process began: the default is
    what it was once the last one leaves, whichever thread that is.
    """
    global _holders, _saved_threads
    if device.type != "cpu":
        yield
        return
    with _lock:
        if _holders == 0:
            _saved_threads = torch.get_num_threads()
        _holders += 1
        restore = _saved_threads
    torch.set_num_threads(1)
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
        torch.set_num_threads(restore)


def set_one_thread() -> None:
    """Initializer of a pool whose threads run CPU forwards (see `one_thread_forwards`)."""
    torch.set_num_threads(1)


def forward_pool(size: int) -> ThreadPoolExecutor:
    """The process's pool of `size` forward threads, made once and kept.

    Not a pool per block: glibc gives each new thread that allocates a malloc arena of its own,
    and with `pipeline.engine.allocator`'s trim threshold each keeps up to 256 MiB of freed heap,
    so fresh threads per block made the peak RSS grow with the scene (`m2cd bench memory`:
    1 913 MiB at 4096², 2 831 MiB at 16384², rss_ratio 1.48) until the arena cap.
    """
    with _lock:
        pool = _pools.get(size)
        if pool is None:
            pool = ThreadPoolExecutor(size, f"m2cd-forward-{size}", initializer=set_one_thread)
            _pools[size] = pool
        return pool
