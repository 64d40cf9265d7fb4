"""Named points of the publish protocol where a test can make the run die (inert by default).

`M2CD_CRASH_AT=<point>` sends SIGKILL to this process when the run reaches `<point>`;
`M2CD_CRASH_AT=<point>:INT` sends SIGINT instead (what Ctrl-C does, at a known moment). Points:
`finalize` (before the products are written), `products-written`, `intent-written`,
`moved-<product>` (after each product is in place), `committed` (after `run.json`). Nothing reads
the variable unless a run reaches a point, and an unset variable does nothing.
"""

from __future__ import annotations

import os
import signal

ENV = "M2CD_CRASH_AT"


def crash_point(name: str) -> None:
    """Die here (SIGKILL, or the named signal) when `M2CD_CRASH_AT` names this point."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    point, _, sig = spec.partition(":")
    if point == name:
        os.kill(os.getpid(), getattr(signal, f"SIG{sig or 'KILL'}"))
