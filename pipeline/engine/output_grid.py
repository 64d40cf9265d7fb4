"""The output grid of a run (the optical grid) and its geometry: CRS labels and pixel areas.

pyproj is imported at module top: only the engine's plan/finalize path imports this module, never
`m2cd --help`.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict
from pyproj import CRS, Geod


class GridSpec(BaseModel):
    """The output grid = the optical grid (CRS as WKT, rasterio-order affine, height, width).

    Plain numbers and WKT, not rasterio objects, so that a plan is JSON and travels to workers."""

    model_config = ConfigDict(frozen=True)

    crs_wkt: str | None
    transform: tuple[float, float, float, float, float, float]
    height: int
    width: int


def crs_label(wkt: str) -> str:
    """`EPSG:n` when the CRS has a code, else its name: what a user recognises in a plan line."""
    crs = CRS.from_wkt(wkt)
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.name


def pixel_area_km2(grid: GridSpec, rows: range) -> np.ndarray | None:
    """Area of one pixel in km² for each row: projected CRS from the transform, geodesic for a
    geographic CRS (area depends on latitude), None without a CRS."""
    if grid.crs_wkt is None:
        return None
    crs = CRS.from_wkt(grid.crs_wkt)
    a, b, c, d, e, f = grid.transform
    if crs.is_projected:
        metres = crs.axis_info[0].unit_conversion_factor
        return np.full(len(rows), abs(a * e - b * d) * metres**2 / 1e6)
    if not crs.is_geographic:
        return None
    geod = (
        Geod(ellps="WGS84")
        if crs.ellipsoid is None
        else Geod(a=crs.ellipsoid.semi_major_metre, rf=crs.ellipsoid.inverse_flattening or 0.0)
    )
    out = np.empty(len(rows))
    for k, r in enumerate(rows):
        lon0, lat0 = c, f + r * e
        lons = [lon0, lon0 + a, lon0 + a, lon0]
        lats = [lat0, lat0, lat0 + e, lat0 + e]
        out[k] = abs(geod.polygon_area_perimeter(lons, lats)[0]) / 1e6
    return out
