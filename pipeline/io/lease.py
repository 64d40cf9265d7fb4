"""One writer per output prefix: an exclusive lease on `OUT/.m2cd/lock`, local disk or S3.

- Local: `flock` on the lock file. The kernel drops it when the holder dies (SIGKILL included), so
  a killed run never blocks the next one and there is no expiry to wait for. The file is unlinked
  on release; a waiter that locked the unlinked inode notices (its fd no longer matches the path)
  and retries, so two holders are impossible.
- S3: a lease object written with conditional requests (seaweedfs 4.48 and AWS honour all three):
  `If-None-Match: *` creates it only when absent, the holder renews it every third of its TTL with
  `If-Match: <its ETag>`, and an expired lease (a killed run) is taken over with `If-Match:
  <the stale ETag>`, so of two runs taking over at once exactly one wins; a lease whose holder
  ran on this host and is gone is taken over the same way without waiting. The window left is time:
  expiry is the holder's wall clock + TTL (120 s by default), so a holder whose renewals all fail
  for a whole TTL, or a taker whose clock runs a TTL ahead, lets a second writer in. The first
  finds out at its next renewal (412) and `check()` stops it before it publishes; only a takeover
  landing between that check and its `run.json` (milliseconds) is not caught.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from pipeline.errors import M2CDError
from pipeline.io import storage

LOCK_NAME = "lock"
_POLL_S = 0.2


class OutputBusyError(M2CDError):
    """Another run holds the writer lease of this output (the CLI prints it and exits 2)."""


class LeaseLostError(M2CDError):
    """Our S3 lease was taken over (renewals stalled past its TTL): stop before publishing."""


def _owner(run: str) -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "run": run,
        "since": datetime.now(UTC).replace(microsecond=0).isoformat(),
    }


def _busy(out: str, holder: dict[str, Any] | None, waited: float) -> OutputBusyError:
    who = "another m2cd run"
    if holder:
        who += f" (pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')})"
    return OutputBusyError(
        f"{out}: {who} is writing this output; waited {waited:.0f} s: run again when it is done, "
        "or set output.lock_wait_s to wait longer"
    )


class _LocalLease:
    def __init__(self, path: str, fd: int):
        self.path, self.fd = path, fd

    def check(self) -> None:
        """A local lock cannot be lost while the process lives."""

    def release(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self.fd)
        with contextlib.suppress(OSError):  # the staging folder, when nothing else is left in it
            os.rmdir(os.path.dirname(self.path))


def _try_local(path: str, owner: dict[str, Any]) -> _LocalLease | None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    try:
        same = os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        same = False
    if not same:  # the holder unlinked it while we waited: lock the new file instead
        os.close(fd)
        return _try_local(path, owner)
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(owner).encode(), 0)
    return _LocalLease(path, fd)


def _local_holder(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            return json.loads(f.read() or "null")
    except (OSError, ValueError):
        return None


class _S3Lease:
    def __init__(self, uri: str, etag: str, owner: dict[str, Any], ttl: float):
        self.uri, self.etag, self.owner, self.ttl = uri, etag, owner, ttl
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew_loop, name="m2cd-lease", daemon=True)
        self._thread.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                self.etag = _s3_put(self.uri, _s3_body(self.owner, self.ttl), if_match=self.etag)
            except _PreconditionFailed:
                self.lost = "taken over by another run after its TTL expired"
                return
            except OSError:  # a short outage: the next renewal tries again within the TTL
                continue

    def check(self) -> None:
        if self.lost is not None:
            raise LeaseLostError(f"{self.uri}: writer lease lost ({self.lost}); nothing published")

    def release(self) -> None:
        self._stop.set()
        self._thread.join(5)
        if self.lost is None:
            # never masks the run's own error (the server may be the thing that failed); a lease
            # left behind expires, or is taken over at once from this host (see `_dead_here`)
            with contextlib.suppress(Exception):
                _s3_call("delete_object", self.uri, IfMatch=self.etag)


class _PreconditionFailed(Exception):
    """A conditional S3 request found the object other than expected (HTTP 412)."""


def _s3_call(op: str, uri: str, **kwargs: Any) -> dict[str, Any]:
    fs = storage.fs_for(uri)
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    try:
        return fs.call_s3(op, Bucket=bucket, Key=key, **kwargs)
    except OSError as exc:
        response = getattr(exc.__cause__, "response", None) or {}
        code = response.get("Error", {}).get("Code")
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
            raise _PreconditionFailed(str(exc)) from None
        raise


def _s3_body(owner: dict[str, Any], ttl: float) -> bytes:
    return json.dumps({**owner, "expires": time.time() + ttl}).encode()


def _s3_put(uri: str, body: bytes, if_match: str | None = None) -> str:
    condition = {"IfMatch": if_match} if if_match else {"IfNoneMatch": "*"}
    return str(_s3_call("put_object", uri, Body=body, **condition)["ETag"])


def _s3_holder(uri: str) -> tuple[str, dict[str, Any]] | None:
    """The current lease object's ETag and content, or None when there is none."""
    # deferred: fsspec's async loop only for S3 leases
    import fsspec.asyn

    try:
        response = _s3_call("get_object", uri)
    except FileNotFoundError:
        return None
    fs = storage.fs_for(uri)
    body = fsspec.asyn.sync(fs.loop, response["Body"].read)
    try:
        content = json.loads(body)
    except ValueError:
        content = {"expires": 0}  # unreadable: treat as expired
    return str(response["ETag"]), content


def _dead_here(holder: dict[str, Any]) -> bool:
    """A holder on this host whose process is gone (killed, or its release could not reach the
    server): its lease need not run out first. A reused pid only makes the taker wait."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _try_s3(uri: str, owner: dict[str, Any], ttl: float) -> tuple[_S3Lease | None, dict | None]:
    try:
        return _S3Lease(uri, _s3_put(uri, _s3_body(owner, ttl)), owner, ttl), None
    except _PreconditionFailed:
        pass
    held = _s3_holder(uri)
    if held is None:
        return None, None  # released meanwhile: the caller tries again at once
    etag, holder = held
    if float(holder.get("expires", 0)) > time.time() and not _dead_here(holder):
        return None, holder
    try:  # expired (its run was killed): take it over, exactly one of several racers wins
        return _S3Lease(uri, _s3_put(uri, _s3_body(owner, ttl), if_match=etag), owner, ttl), None
    except _PreconditionFailed:
        return None, holder


@contextlib.contextmanager
def writer_lease(out: str, run: str, wait_s: float = 0.0, ttl_s: float = 120.0) -> Iterator[Any]:
    """Hold the one writer lease of `out` for the block (waiting up to `wait_s` seconds for it).

    Yields the lease; call its `check()` right before publishing (S3: raises LeaseLostError when
    another run took it over). Raises OutputBusyError naming the holder when `wait_s` runs out.
    """
    folder = storage.join(out, ".m2cd")
    uri = storage.join(folder, LOCK_NAME)
    owner = _owner(run)
    start = time.monotonic()
    holder: dict[str, Any] | None = None
    while True:
        lease: _LocalLease | _S3Lease | None
        if storage.is_remote(uri):
            lease, holder = _try_s3(uri, owner, ttl_s)
        else:
            storage.makedirs(folder)
            lease = _try_local(uri, owner)
            holder = None if lease is not None else _local_holder(uri)
        if lease is not None:
            break
        waited = time.monotonic() - start
        if waited >= wait_s:
            raise _busy(out, holder, waited)
        time.sleep(min(_POLL_S, max(wait_s - waited, 0.01)))
    try:
        yield lease
    finally:
        lease.release()
