"""What a user may give as a scene, and what GDAL opens for it.

One string names a scene, the same on the command line, in a flow parameter and in the Python API:

- a raster (GeoTIFF/COG, VRT, PNG...) by local path, `s3://`, `https://`, `/vsicurl/`, `gs://` or
  `az://` URI (`pipeline.io.remote`);
- a comma-separated band list, `B02.tif,B03.tif,B04.tif,B08.tif` or `VV.tif,VH.tif`: the files are
  stacked in the order given as an in-memory VRT (`pipeline.io.vrt`), each band named after its
  file, so the model's bands are then picked by name (`pipeline.io.band_names`);
- a STAC Item (`.json`, local, `s3://` or URL): its assets are picked by common name
  (`pipeline.io.stac_input`) and its `datetime` is the acquisition time.

A file path containing a comma must go inside a VRT or a STAC Item. The acquisition time of a plain
raster comes from its tags: `ACQUISITION_DATETIME`, `ACQUISITION_DATE`, `ACQUISITION_START_TIME`,
else `TIFFTAG_DATETIME` (`YYYY:MM:DD HH:MM:SS`, the time the file was written by most processors,
which for Level-1/2 products is the acquisition day).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pipeline.errors import InputError
from pipeline.io import remote, storage
from pipeline.io.fingerprint import content_fingerprint
from pipeline.io.stac_input import item_bands, looks_like_item
from pipeline.io.vrt import BandSource, stack_xml

DATE_TAGS = ("ACQUISITION_DATETIME", "ACQUISITION_DATE", "ACQUISITION_START_TIME", "DATETIME")
_TIFF_DATE = re.compile(r"^(\d{4}):(\d{2}):(\d{2})[ T](\d{2}):(\d{2}):(\d{2})")


@dataclass(frozen=True)
class ResolvedInput:
    """A scene string resolved: what GDAL opens, the files behind it, band names, acquisition."""

    spec: str  # as given (shown redacted)
    gdal_path: str  # a path, a /vsi… path, or VRT XML
    parts: tuple[str, ...]  # the files read
    band_names: tuple[str | None, ...] | None = None  # None: the dataset's own descriptions
    acquired: datetime | None = None


def split_list(spec: str) -> list[str]:
    """The parts of a band list (one part for a single raster)."""
    parts = [p.strip() for p in spec.split(",")]
    if len(parts) > 1 and not all(parts):
        raise InputError(remote.redact_uri(spec), "empty entry in the comma-separated band list")
    return parts


def band_label(uri: str) -> str:
    """A band's name from its file: the file name without its extension (`.../T32_B04.tif` →
    `T32_B04`; `band_names.common_name` finds `B04` in it)."""
    path = uri.split("?", 1)[0].rstrip("/")
    return os.path.splitext(path.rsplit("/", 1)[-1])[0]


def parse_when(text: str) -> datetime | None:
    """A tag's date/time (ISO 8601 or TIFF's `YYYY:MM:DD HH:MM:SS`) in UTC, or None."""
    text = text.strip()
    m = _TIFF_DATE.match(text)
    if m:
        y, mo, d, hh, mm, ss = (int(g) for g in m.groups())
        try:
            return datetime(y, mo, d, hh, mm, ss, tzinfo=UTC)
        except ValueError:  # 0000:00:00 00:00:00, as some writers leave it
            return None
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def acquired_from_tags(tags: dict[str, str]) -> datetime | None:
    """The acquisition time a raster's tags record (the module docstring's order), or None."""
    for key in (*DATE_TAGS, "TIFFTAG_DATETIME"):
        if tags.get(key) and (when := parse_when(tags[key])) is not None:
            return when
    return None


def check_supported(uri: str) -> None:
    """Refuse an unknown scheme in one line before GDAL reports it as a missing file."""
    if not remote.supported(uri):
        raise InputError(
            remote.redact_uri(uri),
            f"unsupported URI scheme {remote.scheme(uri)!r} "
            "(local paths, s3://, https://, /vsicurl/, gs:// or az://)",
        )


def input_parts(spec: str, role: str) -> tuple[str, ...]:
    """The files a scene string reads for `role`, without opening any raster (run identity)."""
    parts = split_list(spec)
    if len(parts) == 1 and looks_like_item(spec):
        return (spec, *dict.fromkeys(b.uri for b in item_bands(spec, role)[0]))
    return tuple(parts)


def resolve_input(spec: str, role: str) -> ResolvedInput:
    """Resolve a scene string (the module docstring) for `role` (`optical` or `sar`)."""
    parts = split_list(spec)
    for part in parts:
        check_supported(part)
    if len(parts) == 1 and looks_like_item(spec):
        bands, when = item_bands(spec, role)
        xml, _ = stack_xml(bands)
        names = tuple(b.name for b in bands)
        files = tuple(dict.fromkeys(b.uri for b in bands))
        return ResolvedInput(spec, xml, (spec, *files), names, when)
    if len(parts) == 1:
        return ResolvedInput(spec, storage.gdal_path(spec), (spec,))
    bands = [BandSource(p, 1, band_label(p)) for p in parts]
    xml, first = stack_xml(bands)
    return ResolvedInput(
        spec, xml, tuple(parts), tuple(b.name for b in bands), acquired_from_tags(first.tags)
    )


def fingerprint(spec: str, role: str) -> Any:
    """Identity of a scene string: for a local or S3 file its content (pipeline.io.fingerprint:
    size + sampled hash, or size + ETag), for HTTP its URI, size and ETag; a list of those for a
    band list or a STAC Item (the Item and its assets)."""
    parts = input_parts(spec, role)
    if len(parts) == 1:
        return _file_fingerprint(parts[0])
    return [_file_fingerprint(p) for p in parts]


def _file_fingerprint(uri: str) -> dict[str, Any]:
    kind = remote.scheme(uri)
    if kind is None:  # content, not path or mtime: a touched or copied input resumes
        return content_fingerprint(uri)
    if kind == "s3" or remote.is_url(uri):
        try:
            if kind == "s3":
                return content_fingerprint(uri)
            info = _http_info(uri)
        except (OSError, ValueError) as exc:
            raise InputError(
                remote.redact_uri(uri), f"cannot access ({storage.redact(str(exc))})"
            ) from None
        stamp = info.get("ETag") or info.get("LastModified") or info.get("mtime")
        return {"uri": uri, "size": info.get("size"), "stamp": str(stamp)}
    # gs://, az://, /vsi…: read by GDAL alone (no gcsfs/adlfs here); the URI is the identity
    return {"uri": uri}


def _http_info(uri: str) -> dict[str, Any]:
    # deferred: fsspec only for remote STAC Items and HTTP inputs
    import fsspec

    return fsspec.filesystem("http").info(uri)
