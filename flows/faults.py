"""Which failures are worth a retry: transient I/O and lost workers, never bad inputs.

Retrying is safe only because block writes are idempotent (a block marked done returns at once); it
is useful only when the fault can go away. An `M2CDError` (bad input or config) or a missing file
will fail again the same way, so it fails the task at once with its clear message.
"""

from __future__ import annotations

import errno
import os
from typing import Any

from pipeline.errors import M2CDError

_PERMANENT = (M2CDError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
PERMANENT_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "ENAMETOOLONG", "EACCES", "EPERM", "ENOTDIR", "EISDIR", "EROFS", "ELOOP", "ENOENT",
        "EEXIST", "ENOTEMPTY", "EINVAL", "EXDEV", "EBADF", "EFBIG", "ENOSPC", "EDQUOT", "EMLINK",
        "ENXIO", "ENODEV", "ENOEXEC",
    )
    if hasattr(errno, name)
)  # fmt: skip
"""OS errors that a retry cannot fix: the path, its permissions or the disk must change first
(ENOSPC/EDQUOT too: a full disk does not empty itself; the CLI says so). Plain `OSError`s without
one of these (GDAL/curl I/O, EIO, ECONNRESET...) stay transient."""
_TRANSIENT_NAMES = {
    # botocore / aiobotocore / aiohttp / urllib3 network faults and S3 throttling
    "EndpointConnectionError",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ConnectionClosedError",
    "ClientConnectorError",
    "ServerDisconnectedError",
    "ClientPayloadError",
    "ProtocolError",
    "SlowDown",
    # dask.distributed: a worker died or a connection dropped
    "KilledWorker",
    "CommClosedError",
    "CommError",
    "FutureCancelledError",
    # GDAL /vsis3/ read faults surface as rasterio I/O errors (missing inputs are InputError)
    "RasterioIOError",
}
_TRANSIENT_S3_CODES = {
    "SlowDown",
    "InternalError",
    "ServiceUnavailable",
    "RequestTimeout",
    "503",
    "500",
}


def _s3_code(exc: BaseException) -> str | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", "")) or None
    return None


def is_transient(exc: BaseException | None) -> bool:
    """True for faults a retry can fix (network, S3 5xx/throttling, lost worker)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, _PERMANENT) or _permanent_errno(exc):
            return False
        if type(exc).__name__ in _TRANSIENT_NAMES or _s3_code(exc) in _TRANSIENT_S3_CODES:
            return True
        if isinstance(exc, ConnectionError | TimeoutError):
            return True
        if isinstance(exc, OSError) and type(exc) is OSError:  # plain I/O errors (e.g. GDAL/curl)
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _permanent_errno(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in PERMANENT_ERRNOS


def permanent_os_error(exc: OSError) -> str | None:
    """One line naming the path and the problem for an OSError a retry cannot fix, else None."""
    if not (_permanent_errno(exc) or isinstance(exc, _PERMANENT)):
        return None
    problem = exc.strerror or (os.strerror(exc.errno) if exc.errno else str(exc))
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    where = " -> ".join(paths) if paths else "(no path given)"
    return f"{where}: {problem}"


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect `retry_condition_fn`: retry only transient faults."""
    try:
        state.result()
    except BaseException as exc:  # noqa: BLE001  (we classify whatever the task raised)
        return is_transient(exc)
    return False
