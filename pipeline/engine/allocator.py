"""glibc malloc settings for a process that runs the model between large numpy/GDAL buffers.

By default glibc serves allocations above a *dynamic* threshold with fresh `mmap`s and trims the
heap eagerly. Torch's CPU activations (MiB each, freed and reallocated every layer) then keep
paying page faults, and a detect's large block buffers push the threshold around so that the same
forward runs ~15 % slower after the first block than before it (2× slower with every allocation
mmapped). A fixed 32 MiB threshold with a generous trim threshold and top pad keeps those buffers
on the heap: the m2cd_mit_b0 forward of 121 tiles went from 6.6–8.0 s to a steady 5.9 s on the
2-core dev CPU, and detect's efficiency from 0.72–0.87 to about 0.9 (BENCHMARKS.md). The cost is up
to 256 MiB of freed heap kept for reuse instead of returned to the OS.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
import threading

log = logging.getLogger(__name__)

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
SETTINGS = {
    M_MMAP_THRESHOLD: 32 * 1024 * 1024,  # glibc's maximum on 64-bit
    M_TRIM_THRESHOLD: 256 * 1024 * 1024,
    M_TOP_PAD: 64 * 1024 * 1024,
}
_USER_VARS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
_lock = threading.Lock()
_done = False


def tune_malloc() -> bool:
    """Apply SETTINGS once per process; False where not glibc, opted out or set by the user.

    `M2CD_TUNE_MALLOC=0` opts out; any MALLOC_*_ variable of the user's wins.
    """
    global _done
    with _lock:
        if _done:
            return True
        if (
            not sys.platform.startswith("linux")
            or os.environ.get("M2CD_TUNE_MALLOC", "1") == "0"
            or any(v in os.environ for v in _USER_VARS)
        ):
            return False
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            libc.gnu_get_libc_version  # noqa: B018  (AttributeError where not glibc, e.g. musl)
            ok = all(libc.mallopt(param, value) == 1 for param, value in SETTINGS.items())
        except (OSError, AttributeError):
            return False
        if not ok:
            log.debug("mallopt refused the m2cd settings; glibc defaults stay")
        _done = ok
        return ok
