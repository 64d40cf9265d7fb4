"""Ctrl-C as a command's outcome: exit 130 with one line saying what was kept and how to go on.

Click turns a KeyboardInterrupt into `Abort` (exit 1 when standalone, a traceback otherwise), so a
shell's `m2cd detect … && publish` could not tell an interrupted run from a finished one. Each
long command is wrapped here with its own resume hint; `flows.cli.main` prints it and returns 130
(128 + SIGINT, what shells report). From the first Ctrl-C on, SIGINT is ignored: a second one
during the cleanup would otherwise end the interpreter while block threads still run torch code,
which aborts in C++ ("terminate called without an active exception").
"""

from __future__ import annotations

import functools
import signal
import threading
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

DETECT_HINT = "finished blocks are kept; run the same command to resume"
TRAIN_HINT = "last checkpoint kept; rerun with --resume"


class Interrupted(Exception):
    """The user pressed Ctrl-C; the message says what was kept and how to resume."""


def ignore_further_interrupts() -> None:
    """Ignore SIGINT from now on (main thread only: signal handlers live there)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def on_interrupt(hint: str) -> Callable[[F], F]:
    """Wrap a command so that Ctrl-C raises `Interrupted(hint)` (signature kept for typer)."""

    def wrap(command: F) -> F:
        @functools.wraps(command)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return command(*args, **kwargs)
            except KeyboardInterrupt:
                ignore_further_interrupts()
                raise Interrupted(hint) from None

        return run  # type: ignore[return-value]

    return wrap
