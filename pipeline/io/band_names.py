"""Band names: from file names, band descriptions and STAC common names to the bands a model reads.

A checkpoint records the bands it was trained on by name (provenance `inputs.optical_bands`, e.g.
`["red", "green", "blue"]`; `inputs.sar_bands`, e.g. `["VV"]`). When the input's bands carry names
too (a band list `B02.tif,B03.tif,B04.tif,B08.tif` names them after the files; a STAC Item after its
assets' common names; a GeoTIFF after its band descriptions), the reader picks the model's bands by
name, so Sentinel-2 in its own band order (blue first) reaches an RGB model as red, green, blue
instead of as the first three bands: fed blue-green-red, the shipped model sees water where there is
vegetation. An explicit `optical.bands` / `sar.bands` always wins.
"""

from __future__ import annotations

import re
from typing import Any

from pipeline.errors import InputError
from pipeline.io import storage

# Sentinel-2 MSI band → STAC eo common name (the STAC EO extension's table).
SENTINEL2 = {
    "B01": "coastal",
    "B02": "blue",
    "B03": "green",
    "B04": "red",
    "B05": "rededge",
    "B06": "rededge",
    "B07": "rededge",
    "B08": "nir",
    "B8A": "nir08",
    "B09": "nir09",
    "B10": "cirrus",
    "B11": "swir16",
    "B12": "swir22",
}
COMMON = {
    *SENTINEL2.values(),
    "pan",
    "lwir",
    "lwir11",
    "lwir12",
    "yellow",
    "vv",
    "vh",
    "hh",
    "hv",
}
OPTICAL_DEFAULT = ("blue", "green", "red", "nir")
SAR_DEFAULT = ("vv", "vh")
_S2_TOKEN = re.compile(r"(?:^|[_\-.\s])(B(?:0?[1-9]|1[0-2]|8A))(?:$|[_\-.\s])", re.IGNORECASE)
_TOKEN = re.compile(r"[A-Za-z0-9]+")


def common_name(label: str | None) -> str | None:
    """The common name a band label stands for (`B04` → red, `..._VV_...` → vv), or None."""
    if not label:
        return None
    low = label.strip().lower()
    if low in COMMON:
        return low
    m = _S2_TOKEN.search(label)
    if m:
        token = m.group(1).upper()
        key = token if token == "B8A" else f"B{int(token[1:]):02d}"
        return SENTINEL2.get(key)
    tokens = [t.lower() for t in _TOKEN.findall(label)]
    return next((t for t in tokens if t in COMMON), None)  # "VV", "S1_VH_db", "red edge"


def pick_by_name(labels: tuple[str | None, ...], wanted: list[str]) -> list[int] | None:
    """1-based bands whose labels name `wanted` (in that order), or None unless every one is found."""
    names = [common_name(label) for label in labels]
    picked = []
    for want in wanted:
        key = common_name(want) or want.lower()
        if key not in names:
            return None
        picked.append(names.index(key) + 1)
    return picked


def trained_band_names(checkpoint: str | None) -> tuple[list[str] | None, list[str] | None]:
    """(optical, SAR) band names a checkpoint's provenance records, None where it records none."""
    if checkpoint is None:
        return None, None

    try:
        meta = storage.read_json(checkpoint.rstrip("/") + "/checkpoint.json")
    except (InputError, OSError):
        return None, None
    inputs: Any = (
        (meta.get("provenance") or {}).get("inputs") or {} if isinstance(meta, dict) else {}
    )

    def names(v: object) -> list[str] | None:
        if isinstance(v, list) and v and all(isinstance(s, str) for s in v):
            return [str(s) for s in v]
        return None

    return names(inputs.get("optical_bands")), names(inputs.get("sar_bands"))
