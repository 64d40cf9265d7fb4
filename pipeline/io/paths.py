"""Safe output locations: names and prefixes that cannot escape the configured output root.

Output prefixes come from people and machines we do not control (a Prefect deployment parameter, a
region YAML, a STAC item id turned into a directory). Without a check, `output=../../etc` or a
pair id of `../x` would write anywhere the worker can. Two rules:

- a *name* (region, scene or pair id: one path component) is `[A-Za-z0-9][A-Za-z0-9._-]*`, at
  most 128 characters: no separator, no `..`, no control or shell characters;
- an *output prefix* never contains control characters or backslashes, an `s3://` prefix never a
  `.`/`..` key component; when an output root is configured (`M2CD_OUTPUT_ROOT`, local or
  `s3://`), no `.`/`..` at all, and the prefix must resolve inside the root (local paths through
  symlinks); a relative prefix is then taken relative to the root.

Violations raise `UnsafePathError` (an `InputError`) naming the value and the rule.
"""

from __future__ import annotations

import os
import re

from pipeline.errors import InputError
from pipeline.io import storage

OUTPUT_ROOT_ENV = "M2CD_OUTPUT_ROOT"
MAX_NAME = 128
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_ODD = re.compile(r"[\x00-\x1f\x7f\\]")
ACCESS_HINT = "check the S3 credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY) and permissions"


class UnsafePathError(InputError):
    """A name or output prefix that could escape the output root or is not a plain path."""


def check_name(name: str, what: str = "name") -> str:
    """`name` unchanged when it is one safe path component, else UnsafePathError."""
    if not isinstance(name, str) or not name:
        raise UnsafePathError(repr(name), f"{what} must be a non-empty string")
    if len(name) > MAX_NAME or not _NAME.fullmatch(name):
        raise UnsafePathError(
            repr(name),
            f"{what} must be one path component of letters, digits, '.', '_' or '-', starting "
            f"with a letter or digit, at most {MAX_NAME} characters (no '/', '..' or spaces)",
        )
    return name


def output_root() -> str | None:
    """The configured output root (`$M2CD_OUTPUT_ROOT`), or None when outputs are unrestricted."""
    root = os.environ.get(OUTPUT_ROOT_ENV, "").strip()
    return root or None


def _split_remote(uri: str) -> tuple[str, str, list[str]]:
    scheme, _, rest = uri.partition("://")
    bucket, _, key = rest.partition("/")
    return scheme, bucket, [p for p in key.split("/") if p]


def _check_components(prefix: str, parts: list[str]) -> None:
    bad = [p for p in parts if p in (".", "..")]
    if bad:
        raise UnsafePathError(prefix, f"output prefix may not contain {bad[0]!r} components")


def _check_text(prefix: str) -> None:
    if not prefix or not prefix.strip():
        raise UnsafePathError(repr(prefix), "output prefix is empty")
    if _ODD.search(prefix):
        raise UnsafePathError(
            repr(prefix), "output prefix contains control characters or backslashes"
        )


def _normal_remote(prefix: str) -> str:
    scheme, bucket, parts = _split_remote(prefix)
    if scheme != "s3":
        raise UnsafePathError(prefix, f"unsupported URI scheme {scheme!r} (local paths or s3://)")
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise UnsafePathError(prefix, f"{bucket!r} is not a valid S3 bucket name")
    _check_components(prefix, parts)
    return "/".join([f"s3://{bucket}", *parts])


def _normal_local(prefix: str, strict: bool) -> str:
    path = prefix.removeprefix("file://")
    if strict:
        _check_components(prefix, [p for p in path.split("/") if p])
    return os.path.realpath(path)


def _inside_local(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


def resolve_output(prefix: str, root: str | None = None) -> str:
    """The checked output prefix.

    `root` defaults to `$M2CD_OUTPUT_ROOT`. Without a root only the syntactic rules apply (a local
    `..` is then allowed: there is nothing to escape) and the prefix comes back as given. With a
    root, a relative prefix is placed under it and any other prefix must lie inside it (local
    paths compared after resolving symlinks).
    """
    _check_text(prefix)
    root = root if root is not None else output_root()
    remote = "://" in prefix
    if root is None:
        if remote:
            _normal_remote(prefix)
        return prefix
    _check_text(root)
    root_remote = "://" in root
    if not remote and not os.path.isabs(prefix.removeprefix("file://")):
        parts = [p for p in prefix.split("/") if p]
        _check_components(prefix, parts)
        prefix = "/".join([root.rstrip("/"), *parts]) if root_remote else os.path.join(root, *parts)
        remote = root_remote
    if remote != root_remote:
        raise UnsafePathError(prefix, f"output must lie inside the output root {root}")
    if remote:
        norm, norm_root = _normal_remote(prefix), _normal_remote(root)
        inside = norm == norm_root or norm.startswith(norm_root.rstrip("/") + "/")
    else:
        norm = _normal_local(prefix, strict=True)
        norm_root = os.path.realpath(root.removeprefix("file://"))
        inside = _inside_local(norm, norm_root)
    if not inside:
        raise UnsafePathError(prefix, f"output must lie inside the output root {root}")
    return prefix


def child(prefix: str, *names: str, what: str = "name") -> str:
    """`prefix/name/...` with every name checked as one safe component (region, pair, scene ids)."""

    return storage.join(prefix, *(check_name(n, what) for n in names))


_BAD_CREDENTIALS = {"SignatureDoesNotMatch", "InvalidAccessKeyId", "ExpiredToken", "InvalidToken"}


def require_bucket(prefix: str) -> None:
    """Refuse an `s3://` output whose bucket does not exist or whose credentials are rejected,
    before anything is written.

    Some S3-compatible servers create a bucket on the first PUT, so a typo in the bucket name
    would silently scatter products into a new bucket; AWS would fail half-way instead. A plain
    AccessDenied is let through: a least-privilege role may write a prefix without ListBucket.
    """
    if "://" not in prefix:
        return

    _, bucket, _ = _split_remote(prefix)
    try:
        storage.fs_for(prefix).call_s3("list_objects_v2", Bucket=bucket, MaxKeys=1)
    except FileNotFoundError:
        raise InputError(prefix, f"bucket {bucket!r} does not exist (create it first)") from None
    except PermissionError as exc:
        code = getattr(exc.__cause__, "response", {}).get("Error", {}).get("Code")
        if code in _BAD_CREDENTIALS:
            raise InputError(prefix, f"credentials rejected ({code}): {ACCESS_HINT}") from None
