"""The canonical `change.zarr` store (Zarr v3): created once, then filled block by block.

Layout: `probability` float32 (NaN = nodata), `mask` uint8 (0/1, 255 = nodata), `valid` uint8 (0/1),
dims (y, x), chunks = the engine's block, so each block's core is one chunk-aligned region write
(lock-free across workers). Georeferenced scenes get pixel-centre `x`/`y` coordinates, a CF
`spatial_ref` (crs_wkt, GeoTransform) that rioxarray reads, and GeoZarr `proj:`/`spatial:` attributes
declared in `zarr_conventions`. Metadata is written through xarray, and consolidated, so that a plain
`xr.open_zarr(path)` reads it back unchanged and without a warning: `mask` has no `_FillValue`
attribute (CF masking would turn it into float32 with NaN), its nodata 255 is a CF flag instead.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import zarr
from affine import Affine
from pyproj import CRS

PROBABILITY, MASK, VALID = "probability", "mask", "valid"
MASK_NODATA = 255
MASK_FLAGS = {"flag_values": [0, 1, MASK_NODATA], "flag_meanings": "no_change change nodata"}

# zarr-conventions metadata objects (the `const` values of each convention's v1 schema, vendored
# in tests/data/zarr_conventions/ and validated there).
SPATIAL_CONVENTION = {
    "uuid": "689b58e2-cf7b-45e0-9fff-9cfc0883d6b4",
    "schema_url": "https://raw.githubusercontent.com/zarr-conventions/spatial/refs/tags/v1/schema.json",
    "spec_url": "https://github.com/zarr-conventions/spatial/blob/v1/README.md",
    "name": "spatial",
    "description": "Spatial coordinate information",
}
PROJ_CONVENTION = {
    "uuid": "f17cb550-5864-4468-aeb7-f3180cfb622f",
    "schema_url": "https://raw.githubusercontent.com/zarr-conventions/geo-proj/refs/tags/v1/schema.json",
    "spec_url": "https://github.com/zarr-conventions/geo-proj/blob/v1/README.md",
    "name": "proj:",
    "description": "Coordinate reference system information for geospatial data",
}
MULTISCALES_CONVENTION = {
    "uuid": "d35379db-88df-4056-af3a-620245f8e347",
    "schema_url": "https://raw.githubusercontent.com/zarr-conventions/multiscales/refs/tags/v1/schema.json",
    "spec_url": "https://github.com/zarr-conventions/multiscales/blob/v1/README.md",
    "name": "multiscales",
    "description": "Multiscale layout of zarr datasets",
}


@contextlib.contextmanager
def consolidating() -> Iterator[None]:
    """Silence zarr's "consolidated metadata is not part of the v3 spec" warning while we write it.

    We write it on purpose: object-store readers (xarray's default) then open the store with one
    GET instead of one per array, and xarray warns when it is missing.
    """

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", zarr.errors.ZarrUserWarning)
        yield


def consolidate(store: Any) -> None:
    """Rewrite the consolidated metadata after nodes were added (the overviews at finalize)."""

    with consolidating():
        zarr.consolidate_metadata(store, zarr_format=3)


def pixel_centres(
    transform: tuple[float, ...], shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) pixel-centre coordinates of a grid without rotation, computed exactly as rioxarray
    does (the transform shifted by half a pixel, then applied), so coordinates compare equal."""

    centre = Affine(*transform[:6]) @ Affine.translation(0.5, 0.5)
    h, w = shape
    xs, _ = centre @ (np.arange(w), np.zeros(w))
    _, ys = centre @ (np.zeros(h), np.arange(h))
    return np.asarray(ys, dtype=np.float64), np.asarray(xs, dtype=np.float64)


def geozarr_attrs(
    crs_wkt: str | None, transform: tuple[float, ...], shape: tuple[int, int]
) -> dict:
    """GeoZarr `spatial:` and `proj:` group attributes with their `zarr_conventions` entries.

    Without a CRS only the `spatial:` convention applies (pixel coordinates, no `proj:` keys).
    """
    h, w = int(shape[0]), int(shape[1])
    a, b, c, d, e, f = (float(v) for v in transform[:6])
    xs = [c, a * w + c, b * h + c, a * w + b * h + c]
    ys = [f, d * w + f, e * h + f, d * w + e * h + f]
    attrs: dict[str, Any] = {
        "zarr_conventions": grid_conventions(crs_wkt),
        "spatial:dimensions": ["y", "x"],
        "spatial:shape": [h, w],
        "spatial:transform": [a, b, c, d, e, f],
        "spatial:bbox": [min(xs), min(ys), max(xs), max(ys)],
        "spatial:registration": "pixel",
    }
    attrs.update(proj_attrs(crs_wkt))
    return attrs


def grid_conventions(crs_wkt: str | None) -> list[dict[str, str]]:
    """The `zarr_conventions` entries of a georeferenced (spatial + proj) or plain grid."""
    return [SPATIAL_CONVENTION, PROJ_CONVENTION] if crs_wkt else [SPATIAL_CONVENTION]


def proj_attrs(crs_wkt: str | None) -> dict[str, Any]:
    """`proj:code` when the CRS has an EPSG code, else `proj:wkt2`; {} without a CRS.

    One of the two, never both: the proj: convention's schema requires exactly one CRS form.
    """
    if not crs_wkt:
        return {}

    crs = CRS.from_wkt(crs_wkt)
    epsg = crs.to_epsg()
    return {"proj:code": f"EPSG:{epsg}"} if epsg is not None else {"proj:wkt2": crs.to_wkt()}


def create_store(
    store: Any,
    shape: tuple[int, int],
    chunk: int,
    crs_wkt: str | None,
    transform: tuple[float, ...],
    attrs: dict[str, Any] | None = None,
) -> None:
    """Write the store's metadata and coordinates (no data chunks: unwritten chunks read as nodata).

    Overwrites whatever is at `store`: the caller creates it once per run, before any block.
    """
    # deferred: dask.array + xarray + rioxarray add ~4 s to pipeline.products' importers (m2cd view); only create_store needs them
    import dask.array as da
    import rioxarray  # noqa: F401  (registers the .rio accessor)
    import xarray as xr

    h, w = shape
    chunks = (min(chunk, h), min(chunk, w))
    data = {
        PROBABILITY: (("y", "x"), da.full(shape, np.nan, dtype=np.float32, chunks=chunks)),
        MASK: (("y", "x"), da.full(shape, MASK_NODATA, dtype=np.uint8, chunks=chunks)),
        VALID: (("y", "x"), da.zeros(shape, dtype=np.uint8, chunks=chunks)),
    }
    coords = {}
    if crs_wkt:
        ys, xs = pixel_centres(transform, shape)
        coords = {"y": ("y", ys), "x": ("x", xs)}
    ds = xr.Dataset(data, coords=coords)
    ds[PROBABILITY].attrs.update(long_name="change probability", units="1", valid_range=[0.0, 1.0])
    ds[MASK].attrs.update(long_name="change mask", **MASK_FLAGS)
    ds[VALID].attrs.update(
        long_name="valid pixel mask", flag_values=[0, 1], flag_meanings="nodata valid"
    )
    if crs_wkt:
        ds = ds.rio.write_crs(crs_wkt).rio.write_transform(Affine(*transform[:6]))
        ds = ds.rio.write_coordinate_system()
        for name in (PROBABILITY, MASK, VALID):  # CF link that rioxarray follows to the CRS
            ds[name].attrs["grid_mapping"] = "spatial_ref"
            ds[name].encoding["coordinates"] = "spatial_ref"  # a plain open_zarr keeps it a coord
    ds.attrs.update(geozarr_attrs(crs_wkt, transform, shape))
    ds.attrs.update(attrs or {})
    encoding: dict[str, dict[str, Any]] = {
        PROBABILITY: {"chunks": chunks, "fill_value": np.nan, "_FillValue": np.nan},
        # unwritten chunks read as 255, but no _FillValue: the mask stays uint8 in xarray
        MASK: {"chunks": chunks, "fill_value": MASK_NODATA},
        VALID: {"chunks": chunks, "fill_value": 0},  # 0 is data here, not a missing value
    }
    with consolidating():
        ds.to_zarr(
            store, mode="w", compute=False, consolidated=True, zarr_format=3, encoding=encoding
        )


def write_region(
    store: Any,
    y0: int,
    x0: int,
    probability: np.ndarray,
    mask: np.ndarray,
    valid: np.ndarray,
) -> None:
    """Write one block core at (y0, x0): a chunk-aligned region, so concurrent blocks never clash."""

    group = zarr.open_group(store, mode="r+", zarr_format=3)
    h, w = probability.shape
    region = (slice(y0, y0 + h), slice(x0, x0 + w))
    for name, arr in ((PROBABILITY, probability), (MASK, mask), (VALID, valid)):
        group[name][region] = arr


def read_array(store: Any, name: str) -> np.ndarray:
    """A whole array (tests and small scenes only: products read chunk by chunk)."""

    return np.asarray(zarr.open_group(store, mode="r", zarr_format=3)[name][...])
