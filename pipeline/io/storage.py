"""One place for local paths and `s3://` URIs: fsspec filesystems, GDAL settings, atomic writes.

Configuration comes only from the standard environment, so the same code runs on a laptop, a Dask
worker or a Prefect worker:

- `AWS_ENDPOINT_URL` (or `M2CD_S3_ENDPOINT`): a non-AWS endpoint such as `http://127.0.0.1:8333`;
- `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`: credentials;
- `AWS_DEFAULT_REGION`: the region (never passed as s3fs `client_kwargs`, which breaks bucket
  creation on S3-compatible servers).

Credentials never appear in a repr, a log line or an error message: `redact` strips them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import fsspec

from pipeline.errors import InputError
from pipeline.io.remote import gdal_path as remote_gdal_path
from pipeline.io.remote import is_remote_input, redact_text

REMOTE_SCHEMES = ("s3://",)
_SECRET_VARS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")


def is_remote(uri: str | os.PathLike[str]) -> bool:
    """True for `s3://` URIs; local paths (and `file://`) are not remote."""
    return str(uri).startswith(REMOTE_SCHEMES)


def s3_endpoint() -> str | None:
    """The S3 endpoint URL from the environment (None means AWS itself)."""
    return os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("M2CD_S3_ENDPOINT") or None


def redact(text: str) -> str:
    """`text` with every credential value from the environment replaced by `***` and every URL's
    user:password@ and secret-bearing query string dropped (`pipeline.io.remote`)."""

    for var in _SECRET_VARS:
        value = os.environ.get(var)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return redact_text(text)


def _local_path(uri: str | os.PathLike[str]) -> str:
    text = str(uri)
    return text[len("file://") :] if text.startswith("file://") else text


def fs_for(uri: str | os.PathLike[str]) -> fsspec.AbstractFileSystem:
    """The fsspec filesystem for a URI (s3fs with env credentials, or the local one).

    Listings are not cached: blocks are marked done by other processes, and a stale cache would
    make a resumed run redo them or miss them.
    """
    if not is_remote(uri):
        return fsspec.filesystem("file")
    # deferred: s3fs adds 0.57 s and rasterio 0.2 s to m2cd --help, which loads this module; local runs never need s3fs
    import s3fs

    options: dict[str, Any] = {"use_listings_cache": False}
    endpoint = s3_endpoint()
    if endpoint:
        options["endpoint_url"] = endpoint
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if key and secret:
        options["key"], options["secret"] = key, secret
        if os.environ.get("AWS_SESSION_TOKEN"):
            options["token"] = os.environ["AWS_SESSION_TOKEN"]
    return s3fs.S3FileSystem(**options)


def _strip(uri: str | os.PathLike[str]) -> str:
    """The path as the filesystem from `fs_for` wants it."""
    text = str(uri)
    return text[len("s3://") :] if is_remote(text) else _local_path(text)


def gdal_options(uri: str | os.PathLike[str]) -> dict[str, str]:
    """GDAL config options for reading `uri` (empty for local paths).

    Credentials are *not* included: GDAL reads `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` from the
    process environment itself, and `rasterio.Env` refuses them as keyword options.
    """

    text = str(uri)
    if not is_remote_input(text) and "/vsi" not in text:  # a local path (a VRT may hold /vsi…)
        return {}
    options = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}  # no LIST per open: sidecars unused
    if "s3://" not in text and "/vsis3/" not in text:
        return options
    region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
    if region:
        options["AWS_REGION"] = region
    endpoint = s3_endpoint()
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        options["AWS_S3_ENDPOINT"] = parsed.netloc + parsed.path.rstrip("/")
        options["AWS_HTTPS"] = "NO" if parsed.scheme == "http" else "YES"
        options["AWS_VIRTUAL_HOSTING"] = "FALSE"
    return options


# GDAL's block cache, process-wide. Scenes keep their datasets open (pipeline.io.scene), so without a
# bound the cache would grow to GDAL's default of 5 % of RAM with the scene size; 128 MiB holds a
# block's tile strips (several 512² blocks × bands) and keeps peak RSS independent of the scene.
GDAL_CACHE_BYTES = 128 * 1024 * 1024


def bound_gdal_cache() -> None:
    """Cap GDAL's block cache at GDAL_CACHE_BYTES unless the user set GDAL_CACHEMAX.

    In bytes: rasterio hands an integer GDAL_CACHEMAX to GDALSetCacheMax64 (a bare 64 would mean
    64 *bytes*: every block re-decoded on each access).
    """
    if "GDAL_CACHEMAX" in os.environ:
        return
    # deferred: rasterio adds 0.2 s to m2cd --help, which loads this module
    from rasterio.env import set_gdal_config

    set_gdal_config("GDAL_CACHEMAX", GDAL_CACHE_BYTES)


@contextlib.contextmanager
def gdal_env(uri: str | os.PathLike[str]) -> Iterator[None]:
    """Context in which rasterio/rioxarray read `uri` (an `s3://` URI goes through /vsis3/)."""
    import rasterio  # deferred: rasterio adds 0.2 s to m2cd --help, which loads this module

    with rasterio.Env(**gdal_options(uri)):
        yield


def gdal_path(uri: str | os.PathLike[str]) -> str:
    """The path GDAL opens: `/vsis3/bucket/key` for `s3://bucket/key`, `/vsicurl/` for https,
    `/vsigs/`, `/vsiaz/` (`pipeline.io.remote`), the local path otherwise."""

    return remote_gdal_path(str(uri))


def exists(uri: str | os.PathLike[str]) -> bool:
    """Whether a file or directory (prefix) exists."""
    if not is_remote(uri):
        return os.path.exists(_local_path(uri))
    return fs_for(uri).exists(_strip(uri))


def join(prefix: str | os.PathLike[str], *parts: str) -> str:
    """Join path parts with `/` for URIs and os.path.join for local paths."""
    text = str(prefix)
    if is_remote(text):
        clean = [p.strip("/") for p in parts if p]
        return "/".join([text.rstrip("/"), *clean]) if clean else text
    return os.path.join(_local_path(text), *parts)


def makedirs(uri: str | os.PathLike[str]) -> None:
    """Create a local directory tree (S3 has no directories: nothing to do)."""
    if not is_remote(uri):
        os.makedirs(_local_path(uri), exist_ok=True)


def write_bytes_atomic(uri: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` so that a reader sees either nothing or the whole object.

    Local: a temporary name in the same directory, then `os.replace` (atomic on POSIX).
    S3: a single PUT is atomic per object.
    """
    if is_remote(uri):
        fs_for(uri).pipe_file(_strip(uri), data)
        return
    path = _local_path(uri)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def put_file_atomic(local_path: str | os.PathLike[str], uri: str | os.PathLike[str]) -> None:
    """Publish a finished local file at `uri` atomically (local copy + rename, or one S3 upload)."""
    src = os.fspath(local_path)
    if is_remote(uri):
        fs_for(uri).put_file(src, _strip(uri))
        return
    dst = _local_path(uri)
    directory = os.path.dirname(os.path.abspath(dst))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(dst)}.{uuid.uuid4().hex}.tmp")
    try:
        _copy(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _copy(src: str, dst: str) -> None:

    shutil.copyfile(src, dst)
    with open(dst, "rb+") as f:
        os.fsync(f.fileno())


def move(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Move a file or directory tree (local: os.replace/rename; S3: copy then delete).

    On S3 a prefix move is not atomic; callers publish a marker object last.
    """
    if is_remote(src) != is_remote(dst):
        raise ValueError(f"move between local and remote is not supported: {src} -> {dst}")
    if not is_remote(src):
        os.replace(_local_path(src), _local_path(dst))
        return
    files = copy(src, dst)
    fs = fs_for(src)
    for path in files:
        fs.rm_file(path)


def copy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> list[str]:
    """Copy a file or directory tree to `dst` (which must not exist); the source paths copied.

    S3: object by object (servers disagree on directory markers); a crash leaves a partial `dst`
    and an intact `src`, so a caller can always start the copy again.
    """
    if is_remote(src) != is_remote(dst):
        raise ValueError(f"copy between local and remote is not supported: {src} -> {dst}")
    if not is_remote(src):
        source, target = _local_path(src), _local_path(dst)
        if os.path.isdir(source):
            shutil.copytree(source, target)
        else:
            shutil.copyfile(source, target)
        return [source]
    fs = fs_for(src)
    root, target = _strip(src).rstrip("/"), _strip(dst).rstrip("/")
    if fs.isfile(root):
        fs.copy(root, target)
        return [root]
    files = [p for p in fs.find(root) if p != root]
    if not files:
        raise FileNotFoundError(f"{src}: nothing to copy")
    for path in files:
        fs.copy(path, f"{target}/{os.path.relpath(path, root)}")
    return files


def remove(uri: str | os.PathLike[str], recursive: bool = False) -> None:
    """Delete a file (or, with recursive, a directory/prefix); missing is not an error."""
    if not is_remote(uri):
        path = _local_path(uri)
        if os.path.isdir(path) and not os.path.islink(path):
            if not recursive:
                os.rmdir(path)
            else:
                shutil.rmtree(path)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        return
    fs = fs_for(uri)
    path = _strip(uri)
    if fs.exists(path):
        fs.rm(path, recursive=recursive)


def read_bytes(uri: str | os.PathLike[str]) -> bytes:
    """The whole content of a small object (manifests, JSON)."""
    if not is_remote(uri):
        return Path(_local_path(uri)).read_bytes()
    return fs_for(uri).cat_file(_strip(uri))


def zarr_store(uri: str | os.PathLike[str], read_only: bool = False):
    """A zarr v3 store: `LocalStore` for a path, `FsspecStore` (async s3fs) for `s3://`."""
    # deferred: zarr adds 0.53 s to m2cd --help, which loads this module
    import zarr.storage

    if not is_remote(uri):
        path = _local_path(uri)
        if not read_only:
            os.makedirs(path, exist_ok=True)
        return zarr.storage.LocalStore(path, read_only=read_only)
    options = dict(fs_for(uri).storage_options)
    # from_url builds the async filesystem the way zarr expects (its sessions close cleanly).
    return zarr.storage.FsspecStore.from_url(
        str(uri).rstrip("/"), storage_options=options, read_only=read_only
    )


def read_json(uri: str | os.PathLike[str], missing_ok: bool = False) -> Any:
    """A small JSON document (manifests, markers, checkpoint.json, registry records).

    One error policy for every reader: a missing file is None when `missing_ok` (markers and
    manifests are optional by design), else an InputError "<uri>: not found"; text that does not
    parse is an InputError "<uri>: not valid JSON (...)", one line the CLI prints as is.
    """
    try:
        data = read_bytes(uri)
    except FileNotFoundError:
        if missing_ok:
            return None
        raise InputError(str(uri), "not found") from None
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(str(uri), f"not valid JSON ({exc})") from None


def write_json(uri: str | os.PathLike[str], data: Any) -> None:
    """Write a JSON document atomically (readers never see half a manifest or marker); values
    JSON cannot hold (datetimes) are written as their str()."""
    write_bytes_atomic(uri, (json.dumps(data, indent=1, default=str) + "\n").encode())


def download_dir(uri: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    """Copy a directory/prefix to the local `dest`, atomically: a temporary sibling, then rename.

    Concurrent callers (several workers fetching one checkpoint) never see a half-copied `dest`.
    """

    final = Path(dest)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        if is_remote(uri):
            fs = fs_for(uri)
            root = _strip(uri).rstrip("/")
            files = [p for p in fs.find(root) if p != root]
            if not files:
                raise FileNotFoundError(f"{uri}: no such directory or prefix")
            for path in files:
                target = tmp / os.path.relpath(path, root)
                target.parent.mkdir(parents=True, exist_ok=True)
                fs.get_file(path, str(target))
        else:
            shutil.copytree(_local_path(uri), tmp, dirs_exist_ok=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.exists():
                raise
            shutil.rmtree(tmp)  # another process finished first: keep its copy
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
