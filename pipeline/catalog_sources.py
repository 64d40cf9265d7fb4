"""Where a region's STAC Items come from: a STAC API search, a static catalog, or STAC-GeoParquet.

Each reader returns plain Item dicts (with an absolute `href` of the Item where it has one); the
filters users set (collections, the region's footprint, a datetime window, `eo:cloud_cover` for
optical, `sat:orbit_state` for SAR) are applied to every kind alike by `keep`, so a static catalog
answers like an API. A STAC API gets the collections, `intersects` and `datetime` in the search
itself (pystac-client), and the cloud and orbit filters as CQL2 when it conforms to FILTER; servers
that do not (rustac's in-memory backend answers a filtered search with no items at all) are
filtered here instead.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

from pipeline.errors import InputError
from pipeline.io import remote, storage


def parse_window(text: str | None) -> tuple[datetime | None, datetime | None]:
    """A STAC datetime interval `start/end` (either side `..` or empty: open) in UTC."""
    if not text:
        return None, None
    start, _, end = text.partition("/")

    def one(v: str) -> datetime | None:
        v = v.strip()
        if v in ("", ".."):
            return None
        dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
        return dt if dt.tzinfo else dt.replace(tzinfo=UTC)

    return one(start), one(end or start)


def item_time(item: dict[str, Any]) -> datetime | None:
    """An Item's acquisition time (`datetime`, else `start_datetime`): the date pairs are matched on."""
    props = item.get("properties") or {}
    text = props.get("datetime") or props.get("start_datetime")
    if isinstance(text, datetime):
        return text if text.tzinfo else text.replace(tzinfo=UTC)
    if not isinstance(text, str):
        return None
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _intersects(a: tuple[float, ...], b: list[float]) -> bool:
    return not (b[2] < a[0] or b[0] > a[2] or b[3] < a[1] or b[1] > a[3])


def keep(
    item: dict[str, Any],
    role: str,
    aoi: tuple[float, float, float, float] | None,
    collections: list[str],
    window: tuple[datetime | None, datetime | None],
    max_cloud: float | None,
    orbit_state: str | None,
) -> bool:
    """Whether an Item passes the region's filters (missing properties pass: nothing to judge)."""
    if collections and item.get("collection") not in collections:
        return False
    bbox = item.get("bbox")
    if aoi is not None and bbox is not None and not _intersects(aoi, list(bbox)):
        return False
    when = item_time(item)
    start, end = window
    if when is not None and ((start and when < start) or (end and when > end)):
        return False
    props = item.get("properties") or {}
    cloud = props.get("eo:cloud_cover")
    if role == "optical" and max_cloud is not None and cloud is not None and cloud > max_cloud:
        return False
    orbit = props.get("sat:orbit_state")
    return not (role == "sar" and orbit_state and orbit and orbit.lower() != orbit_state)


def search_api(
    uri: str,
    aoi: tuple[float, float, float, float] | None,
    collections: list[str],
    datetime_window: str | None,
    max_cloud: float | None,
    orbit_state: str | None,
    max_items: int,
) -> list[dict[str, Any]]:
    """Items of a STAC API search (pystac-client), each with `href` = its own URL."""
    # deferred: pystac-client only for stac-api sources (static and GeoParquet regions run without it)
    from pystac_client import Client
    from pystac_client.exceptions import APIError

    shown = remote.redact_uri(uri)
    try:
        client = Client.open(uri)
        options: dict[str, Any] = {"max_items": max_items}
        if collections:
            options["collections"] = collections
        if aoi is not None:
            w, s, e, n = aoi
            ring = [[w, s], [e, s], [e, n], [w, n], [w, s]]
            options["intersects"] = {"type": "Polygon", "coordinates": [ring]}
        if datetime_window:
            options["datetime"] = datetime_window
        clauses = []
        if max_cloud is not None:
            clauses.append({"op": "<=", "args": [{"property": "eo:cloud_cover"}, max_cloud]})
        if orbit_state is not None:
            clauses.append({"op": "=", "args": [{"property": "sat:orbit_state"}, orbit_state]})
        # a cloud filter would drop SAR items (no eo:cloud_cover): only an orbit-only filter or
        # none goes to the server; both are applied per role by `keep` anyway
        # deferred: as above: only a STAC API search needs it
        from pystac_client.conformance import ConformanceClasses

        if clauses and max_cloud is None and client.conforms_to(ConformanceClasses.FILTER):
            options["filter"], options["filter_lang"] = clauses[0], "cql2-json"
        items = []
        for item in client.search(**options).items():
            data = item.to_dict(transform_hrefs=False)
            data["href"] = item.get_self_href()
            items.append(data)
        return items
    except APIError as exc:
        raise InputError(shown, f"STAC API search failed ({storage.redact(str(exc))})") from None
    except OSError as exc:
        raise InputError(shown, f"cannot reach the STAC API ({storage.redact(str(exc))})") from None


def read_static(uri: str) -> list[dict[str, Any]]:
    """Every Item of a static catalog or collection (crawled from `catalog.json`)."""
    # deferred: pystac only for static-catalog sources
    import pystac

    try:
        root = pystac.read_file(uri)
    except FileNotFoundError:
        raise InputError(uri, "static catalog not found") from None
    except (OSError, ValueError) as exc:
        raise InputError(uri, f"not a readable STAC catalog ({exc})") from None
    if not isinstance(root, pystac.Catalog):
        raise InputError(uri, f"expected a STAC Catalog or Collection, got {type(root).__name__}")
    root.make_all_asset_hrefs_absolute()
    items = []
    for item in root.get_items(recursive=True):
        data = item.to_dict(transform_hrefs=False)
        data["href"] = item.get_self_href()
        if item.collection_id and not data.get("collection"):
            data["collection"] = item.collection_id
        items.append(data)
    return items


def read_geoparquet(uri: str) -> list[dict[str, Any]]:
    """Items of a STAC-GeoParquet file (stac-geoparquet's layout: one row per Item, properties as
    top-level columns, `assets` a struct, `bbox` a struct or list), read with pyarrow."""
    # deferred: pyarrow only for STAC-GeoParquet sources
    import pyarrow.parquet as pq

    try:
        if storage.is_remote(uri):
            with storage.fs_for(uri).open(uri, "rb") as f:
                table = pq.read_table(f)
        else:
            table = pq.read_table(os.fspath(uri))
    except FileNotFoundError:
        raise InputError(uri, "GeoParquet file not found") from None
    except (OSError, ValueError) as exc:
        raise InputError(uri, f"not a readable GeoParquet file ({exc})") from None
    top = {"type", "stac_version", "stac_extensions", "id", "geometry", "bbox", "links"}
    top |= {"assets", "collection"}
    items = []
    for row in table.to_pylist():
        bbox = row.get("bbox")
        if isinstance(bbox, dict):
            bbox = [bbox.get("xmin"), bbox.get("ymin"), bbox.get("xmax"), bbox.get("ymax")]
        props = {k: v for k, v in row.items() if k not in top and v is not None}
        when = props.get("datetime")
        if isinstance(when, datetime):
            props["datetime"] = (when if when.tzinfo else when.replace(tzinfo=UTC)).isoformat()
        assets = {k: v for k, v in (row.get("assets") or {}).items() if v}
        items.append(
            {
                "type": "Feature",
                "id": row.get("id"),
                "collection": row.get("collection"),
                "bbox": bbox,
                "properties": props,
                "assets": assets,
            }
        )
    return items
