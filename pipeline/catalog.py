"""Scene discovery for a region and the optical→SAR pairing rule (pure, no Prefect).

A region's scenes come from one of two sources:

* **prefix** (local directory or ``s3://`` prefix) with this layout::

      PREFIX/optical/<date>[_<anything>].tif
      PREFIX/sar/<date>[_<anything>].tif

  where ``<date>`` is ``YYYY-MM-DD``, ``YYYYMMDD``, or either followed by ``THHMMSS`` /
  ``THH:MM:SS`` (UTC). Files that do not start with a date are ignored (and listed in
  ``Catalog.skipped``). The prefix is the region: no footprint filtering is done.
* **stac-api** (a STAC API searched with pystac-client: ``collections``, ``intersects`` the AOI,
  the ``datetime`` window; ``max_cloud`` on optical ``eo:cloud_cover``, ``orbit_state`` on SAR
  ``sat:orbit_state``), **stac-catalog** (a static ``catalog.json``, crawled) and **geoparquet**
  (STAC-GeoParquet) give Items filtered the same way (``pipeline.catalog_sources``); an Item with
  a URL or file of its own is the scene (its bands picked by common name, ``pipeline.io.sources``).
* **stac**: a STAC ItemCollection JSON (local or ``s3://``). Each item's role is
  ``properties["m2cd:role"]`` when present, else ``sar`` when it has any ``sar:*`` property, else
  ``optical``; its time is ``properties.datetime``; its image is the asset named by ``asset`` (default:
  the first GeoTIFF asset). Items whose bbox does not intersect the region's AOI are dropped.

Pairing: for each SAR scene, the **latest optical scene acquired within N days before it** (same instant
counts). SAR scenes without such an optical scene are reported as unpaired.
"""

from __future__ import annotations

import hashlib
import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator

from m2cd.config import ConfigSection
from pipeline import catalog_sources as cs
from pipeline.catalog_sources import item_time, keep, parse_window
from pipeline.config import CONFIG_DIR, format_validation_error
from pipeline.errors import ConfigError, InputError
from pipeline.io import storage

Role = Literal["optical", "sar"]
_DATE = re.compile(r"^(\d{4})-?(\d{2})-?(\d{2})(?:T(\d{2}):?(\d{2}):?(\d{2}))?")
_IMAGE_SUFFIXES = (".tif", ".tiff", ".vrt", ".png", ".jp2")


class SourceConfig(ConfigSection):
    """Where a region's scenes are listed (STAC filters apply to every STAC kind)."""

    kind: Literal["prefix", "stac", "stac-api", "stac-catalog", "geoparquet"] = "prefix"
    uri: str = Field(
        description="Prefix (local or s3://), STAC ItemCollection JSON, STAC API root URL, "
        "static catalog.json, or STAC-GeoParquet file."
    )
    asset: str | None = Field(
        default=None,
        description="STAC asset key; default: the Item itself where it has a URL or file (bands "
        "picked by common name), else its first GeoTIFF asset.",
    )
    collections: list[str] = Field(default_factory=list, description="STAC collections to keep.")
    datetime: str | None = Field(
        default=None, description="STAC datetime window 'start/end' ('..' open); none: all."
    )
    max_cloud: float | None = Field(
        default=None, ge=0, le=100, description="Optical items: eo:cloud_cover at most this (%)."
    )
    orbit_state: Literal["ascending", "descending"] | None = Field(
        default=None, description="SAR items: sat:orbit_state."
    )
    max_items: int = Field(default=1000, ge=1, description="STAC API: most items one search reads.")

    @field_validator("uri")
    @classmethod
    def _home(cls, v: str) -> str:
        return os.path.expanduser(v) if v.startswith("~") else v


class PairingConfig(ConfigSection):
    """Latest optical scene within `max_days_before` days before each SAR scene."""

    max_days_before: float = Field(default=30, gt=0)


class RegionConfig(ConfigSection):
    """One monitored region (configs/regions/<name>.yaml)."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    aoi: tuple[float, float, float, float] | None = Field(
        default=None, description="lon/lat bbox (west, south, east, north); STAC sources only."
    )
    source: SourceConfig
    pairing: PairingConfig = PairingConfig()
    output: str = Field(description="Output prefix (local or s3://); one sub-prefix per pair.")
    model: str = Field(default="promoted", description="Checkpoint path/URI or 'promoted'.")
    overrides: dict[str, Any] = Field(default_factory=dict, description="Dotted DetectConfig keys.")
    schedule: str = Field(default="0 6 * * *", description="Cron of the monitor deployment (UTC).")
    enabled: bool = Field(default=True, description="False: `m2cd serve` skips it unless named.")

    @field_validator("output")
    @classmethod
    def _home(cls, v: str) -> str:
        return os.path.expanduser(v) if v.startswith("~") else v

    @field_validator("aoi")
    @classmethod
    def _ordered(cls, v: tuple[float, float, float, float] | None):
        if v is not None and not (v[0] < v[2] and v[1] < v[3]):
            raise ValueError(
                f"aoi must be (west, south, east, north) with west<east, south<north: {v}"
            )
        return v


class SceneRef(BaseModel):
    """One scene: where it is, what it is, when it was acquired."""

    uri: str
    role: Role
    datetime: datetime
    id: str


class Pair(BaseModel):
    """A detection job: one optical scene before one SAR scene."""

    id: str
    optical: SceneRef
    sar: SceneRef

    @property
    def gap_days(self) -> float:
        """Days from optical to SAR acquisition: pairing keeps it within `max_days_before` (30 by
        default), since older optical scenes show more change that is not the event."""
        return (self.sar.datetime - self.optical.datetime).total_seconds() / 86400


class Catalog(BaseModel):
    """The scenes a discovery found, and the files it skipped with why (so a user sees what was left
    out)."""

    scenes: list[SceneRef]
    skipped: list[str] = []


def load_region(source: str | Path) -> RegionConfig:
    """A region config from a YAML path or a name in configs/regions/."""
    path = Path(source)
    if not path.suffix and (CONFIG_DIR / "regions" / f"{source}.yaml").exists():
        path = CONFIG_DIR / "regions" / f"{source}.yaml"
    if not path.is_file():
        raise ConfigError(f"{path}: region config not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    data.setdefault("name", path.stem)
    try:
        return RegionConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path))) from None


def parse_datetime(name: str) -> datetime | None:
    """Acquisition time from a file name that starts with a date, or None."""
    m = _DATE.match(name)
    if not m:
        return None
    y, mo, d, hh, mm, ss = (int(g) if g else 0 for g in m.groups())
    try:
        return datetime(y, mo, d, hh, mm, ss, tzinfo=UTC)
    except ValueError:
        return None


def _ls_images(fs: Any, base: str) -> list[str]:
    if not fs.exists(base):
        return []
    return sorted(p for p in fs.ls(base, detail=False) if p.lower().endswith(_IMAGE_SUFFIXES))


def list_prefix(uri: str) -> Catalog:
    """Scenes under PREFIX/optical/ and PREFIX/sar/ (see the module docstring)."""
    uri = uri.rstrip("/")
    if not storage.exists(uri):
        raise InputError(uri, "scene prefix does not exist")
    remote = storage.is_remote(uri)
    fs = storage.fs_for(uri)
    base = uri[len("s3://") :] if remote else os.path.abspath(uri.removeprefix("file://"))
    scenes, skipped = [], []
    for role in ("optical", "sar"):
        for path in _ls_images(fs, f"{base}/{role}"):
            name = path.rsplit("/", 1)[-1]
            when = parse_datetime(name)
            full = f"s3://{path}" if remote else path
            if when is None:
                skipped.append(full)
                continue
            scenes.append(SceneRef(uri=full, role=role, datetime=when, id=Path(name).stem))
    return Catalog(scenes=scenes, skipped=skipped)


def _item_role(props: dict[str, Any]) -> Role:
    role = props.get("m2cd:role")
    if role in ("optical", "sar"):
        return role
    return "sar" if any(k.startswith("sar:") for k in props) else "optical"


def _item_asset(item: dict[str, Any], key: str | None, where: str) -> str:
    assets = item.get("assets", {})
    if key is not None:
        if key not in assets:
            raise InputError(where, f"item {item.get('id')!r} has no asset {key!r}")
        return assets[key]["href"]
    for asset in assets.values():
        if "tiff" in asset.get("type", "") or asset.get("href", "").lower().endswith(".tif"):
            return asset["href"]
    raise InputError(where, f"item {item.get('id')!r} has no GeoTIFF asset")


def _absolute(href: str, collection_uri: str) -> str:
    if "://" in href or href.startswith("/"):
        return href
    return collection_uri.rsplit("/", 1)[0] + "/" + href.removeprefix("./")


def scenes_from_items(
    items: list[dict[str, Any]], source: SourceConfig, aoi: Any, where: str
) -> Catalog:
    """SceneRefs of the Items that pass the source's filters (`catalog_sources.keep`)."""

    try:
        window = parse_window(source.datetime)
    except ValueError as exc:
        raise ConfigError(
            f"source.datetime: {source.datetime!r} is not 'start/end' ({exc})"
        ) from None
    scenes, skipped = [], []
    for item in items:
        props = item.get("properties") or {}
        when = item_time(item)
        if when is None:
            skipped.append(str(item.get("id")))
            continue
        role = _item_role(props)
        if not keep(
            item, role, aoi, source.collections, window, source.max_cloud, source.orbit_state
        ):
            continue
        if source.asset is None and item.get("href"):
            uri = item["href"]  # the Item itself: its bands picked by common name
        else:
            uri = _absolute(_item_asset(item, source.asset, where), where)
        scenes.append(SceneRef(uri=uri, role=role, datetime=when, id=str(item["id"])))
    return Catalog(scenes=scenes, skipped=skipped)


def list_stac(
    uri: str, aoi: tuple[float, float, float, float] | None = None, asset: str | None = None
) -> Catalog:
    """Scenes of a STAC ItemCollection JSON, filtered by AOI bbox."""
    data = storage.read_json(uri)
    if data.get("type") != "FeatureCollection":
        raise InputError(uri, f"expected a STAC ItemCollection, got type {data.get('type')!r}")
    source = SourceConfig(kind="stac", uri=uri, asset=asset)
    return scenes_from_items(data.get("features", []), source, aoi, uri)


def discover(region: RegionConfig) -> Catalog:
    """The region's scenes, whatever the source kind."""

    src = region.source
    if src.kind == "prefix":
        return list_prefix(src.uri)
    if src.kind == "stac":
        data = storage.read_json(src.uri)
        if data.get("type") != "FeatureCollection":
            raise InputError(src.uri, f"expected a STAC ItemCollection, got {data.get('type')!r}")
        items = data.get("features", [])
    elif src.kind == "stac-api":
        items = cs.search_api(
            src.uri,
            region.aoi,
            src.collections,
            src.datetime,
            src.max_cloud,
            src.orbit_state,
            src.max_items,
        )
    elif src.kind == "stac-catalog":
        items = cs.read_static(src.uri)
    else:
        items = cs.read_geoparquet(src.uri)
    return scenes_from_items(items, src, region.aoi, src.uri)


def pair_id(optical: SceneRef, sar: SceneRef) -> str:
    """Stable, readable, path-safe id: SAR time + short hash of both URIs."""
    h = hashlib.sha256(f"{optical.uri}\n{sar.uri}".encode()).hexdigest()[:8]
    return f"{sar.datetime:%Y%m%dT%H%M%S}-{h}"


def pair_scenes(
    scenes: list[SceneRef], max_days_before: float
) -> tuple[list[Pair], list[SceneRef]]:
    """Pairs (latest optical within N days before each SAR) and the SAR scenes left unpaired."""
    optical = sorted((s for s in scenes if s.role == "optical"), key=lambda s: (s.datetime, s.uri))
    window = timedelta(days=max_days_before)
    pairs, unpaired = [], []
    for sar in sorted((s for s in scenes if s.role == "sar"), key=lambda s: (s.datetime, s.uri)):
        candidates = [o for o in optical if sar.datetime - window <= o.datetime <= sar.datetime]
        if not candidates:
            unpaired.append(sar)
            continue
        best = candidates[-1]
        pairs.append(Pair(id=pair_id(best, sar), optical=best, sar=sar))
    return pairs, unpaired
