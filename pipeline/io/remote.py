"""Remote input URIs: which GDAL virtual file system reads each scheme, and how to show them safely.

Inputs come from where users keep them: `s3://` buckets, `https://` servers (signed URLs from a
catalog), `gs://` and `az://` stores, or a GDAL path someone already wrote (`/vsicurl/...`). GDAL reads
all of them with range requests (a 512² window of a COG is a few hundred kB, not the file), so each
scheme maps to its virtual file system:

| given | GDAL opens |
| --- | --- |
| `s3://b/k` | `/vsis3/b/k` |
| `https://h/k`, `http://h/k` | `/vsicurl/https://h/k` |
| `gs://b/k` | `/vsigs/b/k` |
| `az://c/k` | `/vsiaz/c/k` |
| `/vsi…/…` | as given |

Credentials come from the environment as GDAL reads them (AWS_*, GS_*, AZURE_*) or ride in a signed
URL's query string; neither is ever printed: `redact_uri` drops user:password@ and secret-bearing
query strings, and `redact_text` does the same inside any message (GDAL's and curl's errors quote
the URL they failed on).
"""

from __future__ import annotations

import os
import re
from urllib.parse import urlsplit, urlunsplit

_VSI = {"s3": "/vsis3/", "gs": "/vsigs/", "az": "/vsiaz/"}
_HTTP = ("http://", "https://")
# Query parameters that carry secrets in presigned or token-bearing URLs (S3, GCS, Azure SAS).
_SECRET_QUERY = re.compile(
    r"(x-amz-(signature|credential|security-token)|x-goog-(signature|credential)|signature|sig|"
    r"token|access_?key|secret|password|key|se|sv|sp)=",
    re.IGNORECASE,
)
# a secret query parameter anywhere in a message (errors quote relative URLs too: `url: /x?sig=…`)
_SECRET_PARAM = re.compile(
    r"([?&](?:x-amz-(?:signature|credential|security-token)|x-goog-(?:signature|credential)|"
    r"signature|sig|token|access_?key|secret|password|key)=)[^&\s'\"<>)]*",
    re.IGNORECASE,
)
_URL_IN_TEXT = re.compile(r"(?:https?|s3|gs|az)://[^\s'\"<>,)]+")
_SECRET_VARS = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "GS_SECRET_ACCESS_KEY",
    "GS_ACCESS_KEY_ID",
    "AZURE_STORAGE_ACCESS_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_CONNECTION_STRING",
)


def scheme(uri: str) -> str | None:
    """`s3`, `https`, `http`, `gs`, `az` or `vsi` for a remote input, None for a local path."""
    if uri.startswith("/vsi"):
        return "vsi"
    head, sep, _ = uri.partition("://")
    if not sep or head == "file":
        return None
    return head.lower()


def is_remote_input(uri: str) -> bool:
    """Whether reading `uri` goes over a network (any scheme above, or a /vsi… path)."""
    return scheme(uri) is not None


def is_url(uri: str) -> bool:
    """An `http(s)://` URL (read by GDAL through /vsicurl/, by fsspec over HTTP)."""
    return uri.lower().startswith(_HTTP)


def gdal_path(uri: str) -> str:
    """The path GDAL opens for an input URI (the table in the module docstring)."""
    kind = scheme(uri)
    if kind is None:
        return uri.removeprefix("file://")
    if kind == "vsi":
        return uri
    if kind in ("http", "https"):
        return f"/vsicurl/{uri}"
    if kind in _VSI:
        return _VSI[kind] + uri.split("://", 1)[1]
    raise ValueError(f"unsupported URI scheme {kind!r}")


def supported(uri: str) -> bool:
    """Whether `uri`'s scheme is one the table above maps (else the reader refuses it by name)."""
    kind = scheme(uri)
    return kind is None or kind in ("vsi", "http", "https", *_VSI)


def redact_uri(uri: str) -> str:
    """`uri` without user:password@ and without a query string that carries a secret."""
    inner = uri[len("/vsicurl/") :] if uri.startswith("/vsicurl/") else None
    if inner is not None:
        return "/vsicurl/" + redact_uri(inner)
    parts = urlsplit(uri)
    if not parts.scheme or len(parts.scheme) == 1:  # a local path (or a Windows drive letter)
        return uri
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = "" if _SECRET_QUERY.search(parts.query) else parts.query
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_spec(spec: str) -> str:
    """A scene string (one URI or a comma-separated band list) with each URI redacted."""
    return ",".join(redact_uri(part) for part in spec.split(","))


def redact_text(text: str) -> str:
    """`text` with every URL in it redacted and every credential value of the environment masked."""
    text = _URL_IN_TEXT.sub(lambda m: redact_uri(m.group(0)), text)
    text = _SECRET_PARAM.sub(r"\1***", text)
    for var in _SECRET_VARS:
        value = os.environ.get(var)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text
