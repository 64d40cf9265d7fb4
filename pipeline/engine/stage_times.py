"""Where a run's host time goes: read, normalise, transfer, model, blend, write, finalize.

Off by default, and then `stage(name)` hands back one shared no-op context (no clock read, no lock):
the engine calls it once per strip, batch or block (hundreds per run, not per pixel), so even when
recording the two `perf_counter` calls and one lock cost ~1 µs against milliseconds of work.
`m2cd bench pipeline --null-model` records them to show the next host-side bottleneck.
Times are summed over threads (a reader thread's reads add to the block thread's blending).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from types import TracebackType

STAGES = ("plan", "read", "normalise", "transfer", "model", "blend", "write", "finalize")

_lock = threading.Lock()
_totals: dict[str, float] = {}
_enabled = False
_OFF: AbstractContextManager[None] = nullcontext()


class _Timed:
    __slots__ = ("name", "start")

    def __init__(self, name: str) -> None:
        self.name = name
        self.start = 0.0

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        elapsed = time.perf_counter() - self.start
        with _lock:
            _totals[self.name] = _totals.get(self.name, 0.0) + elapsed


def stage(name: str) -> AbstractContextManager[None]:
    """Time the `with` body under `name` while recording; a shared no-op otherwise."""
    return _Timed(name) if _enabled else _OFF


@contextmanager
def recording() -> Iterator[dict[str, float]]:
    """Record every stage inside the `with`; the dict it yields holds the seconds on exit."""
    global _enabled
    result: dict[str, float] = {}
    with _lock:
        _totals.clear()
        _enabled = True
    try:
        yield result
    finally:
        with _lock:
            _enabled = False
            result.update({name: _totals.get(name, 0.0) for name in STAGES})
            result.update({k: v for k, v in _totals.items() if k not in result})
            _totals.clear()
