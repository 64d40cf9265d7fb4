"""Reading ahead of compute: a reader thread that fills the gaps the model leaves, never more.

The depth rule and the idle scheduling class below were measured on the 2-core dev machine; both
are explained where they are decided.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Iterator
from typing import TypeVar, cast

import torch

from pipeline.engine.cpu_forwards import usable_cores

T = TypeVar("T")


def read_ahead_depth(
    setting: int | str, device: torch.device, remote_inputs: bool, forwards: int = 1
) -> int:
    """Batches to read ahead: `auto` reads ahead only where the reader has CPU to itself.

    On a CPU run whose forwards (`forwards` at once, each on torch's intra-op threads) cover
    every core, a read-ahead thread has nothing to overlap with and stalls the model's thread
    barriers (measured: -11 % end to end on 2 cores), so it reads in line, in the gap the oldest
    forward leaves. A GPU run, network reads (s3://) and spare cores all leave room.
    """
    if setting != "auto":
        return int(setting)
    spare_cpu = torch.get_num_threads() * forwards < usable_cores()
    return 2 if device.type != "cpu" or remote_inputs or spare_cpu else 0


def _yield_cores() -> None:
    """Put the reader thread in Linux's SCHED_IDLE class: it runs when a core would idle.

    A reader competing with the model's intra-op threads on equal terms stalls their barriers far
    beyond its own CPU time (+25 % per batch on 2 cores); at idle priority it fills the gaps
    (network waits, a GPU computing) and yields the moment the model needs the core.
    """
    with contextlib.suppress(AttributeError, OSError):  # not Linux: only slower, never wrong
        os.sched_setscheduler(threading.get_native_id(), os.SCHED_IDLE, os.sched_param(0))


def read_ahead(batches: Iterator[T], depth: int) -> Iterator[T]:
    """Runs the batch iterator in a thread, `depth` batches ahead (I/O overlaps compute)."""
    if depth <= 0:
        yield from batches
        return
    q: queue.Queue[object] = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def work() -> None:
        _yield_cores()
        try:
            for b in batches:
                while not stop.is_set():
                    try:
                        q.put(b, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as exc:  # re-raised in the consumer
            q.put(exc)

    thread = threading.Thread(target=work, name="m2cd-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield cast(T, item)  # anything but the sentinel or an error is a batch
    finally:
        stop.set()
        thread.join(timeout=5)
