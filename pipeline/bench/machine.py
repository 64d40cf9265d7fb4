"""What machine a figure was taken on: CPU model, ISA, cores, torch threads (every bench JSON).

Figures differ by machine kind (the AVX2-only AMD EPYC emulates bf16: 15 min for `bench model`
where an AVX-512 BF16 CPU took seconds), so each JSON names the kind it was taken on.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from pipeline.engine.cpu_forwards import usable_cores
from pipeline.engine.device import CpuIsa, detect_cpu_isa


def cpu_model_name(cpuinfo: str | None = None) -> str:
    """The `model name` line of /proc/cpuinfo (else the platform's processor string)."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text(errors="replace") if path.exists() else ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            return value.strip()
    return platform.processor() or platform.machine()


def _set_affinity_all_threads(cpus: set[int]) -> None:
    """Every thread of this process onto `cpus` (Linux: affinity is per thread, and torch's
    intra-op pool and our worker pools already exist when a bench pins)."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except (ProcessLookupError, PermissionError):  # a thread that ended meanwhile
            continue


@contextmanager
def pinned_to_cores(n: int) -> Iterator[bool]:
    """Run the body on `n` of this process's cores; yields whether it could pin.

    Why: "1 thread" is not "1 core". The engine's one-worker run still has its products-pass
    thread, GDAL's COG threads and the deflate pool beside it, which take the second core, so an
    unpinned 1 → 2 "thread scaling" compares 2 cores with 2 cores. Threads started in the body
    inherit the affinity of the thread that starts them. Not pinned (False) where the platform
    has no per-thread affinity or the process has fewer than `n` cores."""
    if not (hasattr(os, "sched_setaffinity") and os.path.isdir("/proc/self/task")):
        yield False
        return
    allowed = os.sched_getaffinity(0)
    if len(allowed) < n:
        yield False
        return
    _set_affinity_all_threads(set(sorted(allowed)[:n]))
    try:
        yield True
    finally:
        _set_affinity_all_threads(allowed)


def machine_info(isa: CpuIsa | None = None) -> dict[str, Any]:
    """The `machine` object of a bench JSON."""
    isa = isa or detect_cpu_isa()
    info: dict[str, Any] = {
        "cpu_model": cpu_model_name(),
        "arch": platform.machine(),
        "cores": usable_cores(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "torch_version": torch.__version__,
        **isa.model_dump(),
        "native_bf16": isa.native_bf16,
    }
    if torch.cuda.is_available():
        info["cuda_devices"] = [
            torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())
        ]
    return info
