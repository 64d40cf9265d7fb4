"""A STAC Item as a scene: its assets picked by band common name, its datetime as the acquisition.

Catalogs deliver a scene as an Item whose assets are one file per band (Sentinel-2 L2A: `blue`,
`green`, `red`, `nir`, ...; Sentinel-1 RTC: `vv`, `vh`). The reader takes, for the optical role, the
assets named blue, green, red and nir (in that order; the model's own bands are then picked from
them by name, `pipeline.io.band_names`) and for SAR vv and vh, whichever the Item has. A band's
name comes from `eo:bands[].common_name` (STAC 1.0), `bands[].eo:common_name` (STAC 1.1),
`sar:polarizations` or the asset key. Where one band is in several assets (Sentinel-2's 8-bit
`visual` holds red too), the asset with the fewest bands wins: the full-range single band.
Relative hrefs resolve against the Item's own location.
"""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urljoin, urlsplit

from pipeline.errors import InputError
from pipeline.io import remote, storage
from pipeline.io.band_names import OPTICAL_DEFAULT, SAR_DEFAULT, common_name
from pipeline.io.vrt import BandSource

_RASTER_TYPES = ("image/tiff", "image/jp2", "application/x-geotiff", "image/vnd.stac.geotiff")
_RASTER_SUFFIXES = (".tif", ".tiff", ".jp2", ".vrt")


_API_ITEM = re.compile(r"/collections/[^/]+/items/[^/]+/?$")


def looks_like_item(spec: str) -> bool:
    """Whether `spec` names a STAC Item rather than a raster: a `.json` document, or a STAC API
    Item URL (`…/collections/<c>/items/<id>`, as a search returns them)."""
    path = urlsplit(spec).path if "://" in spec else spec
    if remote.is_url(spec) and _API_ITEM.search(path):
        return True
    return path.lower().endswith((".json", ".geojson"))


def read_document(spec: str) -> Any:
    """The JSON at `spec`: a local path, `s3://`, or an `http(s)://` URL."""
    shown = remote.redact_uri(spec)
    try:
        if remote.is_url(spec):
            # deferred: fsspec only for a remote STAC Item
            import fsspec

            with fsspec.open(spec, "rb") as f:
                data = f.read()
        elif remote.scheme(spec) in (None, "s3"):
            data = storage.read_bytes(spec)
        else:
            raise InputError(shown, "a STAC Item is read from a path, s3:// or http(s):// only")
    except FileNotFoundError:
        raise InputError(shown, "file not found") from None
    except OSError as exc:
        raise InputError(shown, f"cannot read ({storage.redact(str(exc))})") from None
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(shown, f"not valid JSON ({exc})") from None


def _href(href: str, base: str) -> str:
    if "://" in href or href.startswith("/"):
        return href
    if "://" in base:
        return urljoin(base, href)
    return os.path.join(os.path.dirname(os.path.abspath(base)), href)


def _is_raster(asset: dict[str, Any]) -> bool:
    kind = str(asset.get("type", "")).lower()
    href = urlsplit(str(asset.get("href", ""))).path.lower()
    return any(t in kind for t in _RASTER_TYPES) or href.endswith(_RASTER_SUFFIXES)


def asset_band_names(key: str, asset: dict[str, Any]) -> list[str | None]:
    """The common name of each band of an asset (None where it names none)."""
    bands = asset.get("eo:bands") or asset.get("bands")
    if isinstance(bands, list) and bands:
        out: list[str | None] = []
        for b in bands:
            b = b if isinstance(b, dict) else {}
            out.append(
                common_name(b.get("common_name") or b.get("eo:common_name") or b.get("name"))
            )
        return out
    pols = asset.get("sar:polarizations")
    if isinstance(pols, list) and len(pols) == 1:
        return [common_name(str(pols[0]))]
    return [common_name(key)]


def acquired(props: dict[str, Any]) -> datetime | None:
    """The Item's acquisition time: `datetime`, else `start_datetime`."""
    text = props.get("datetime") or props.get("start_datetime")
    if not isinstance(text, str):
        return None
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def item_bands(spec: str, role: str) -> tuple[list[BandSource], datetime | None]:
    """The band sources of the Item at `spec` for `role` and its acquisition time."""
    item = read_document(spec)
    shown = remote.redact_uri(spec)
    if not isinstance(item, dict) or item.get("type") != "Feature":
        kind = item.get("type") if isinstance(item, dict) else type(item).__name__
        raise InputError(shown, f"expected a STAC Item (type Feature), got type {kind!r}")
    wanted = OPTICAL_DEFAULT if role == "optical" else SAR_DEFAULT
    found: dict[str, tuple[int, str, BandSource]] = {}
    for key, asset in (item.get("assets") or {}).items():
        if not isinstance(asset, dict) or not asset.get("href") or not _is_raster(asset):
            continue
        names = asset_band_names(key, asset)
        uri = _href(str(asset["href"]), spec)
        for i, name in enumerate(names, start=1):
            if name is not None and name in wanted:
                rank = (len(names), key)
                if name not in found or rank < found[name][:2]:
                    found[name] = (len(names), key, BandSource(uri, i, name))
    if not found:
        keys = ", ".join(sorted(item.get("assets") or {})) or "none"
        raise InputError(
            shown,
            f"item {item.get('id')!r} has no {role} raster asset named {', '.join(wanted)} "
            f"(by eo:bands common_name or asset key); its assets: {keys}",
        )
    bands = [found[name][2] for name in wanted if name in found]
    return bands, acquired(item.get("properties") or {})
