"""The canonical `change.zarr` store (Zarr v3): created once, then filled block by block.

Layout: `probability` float32 (NaN = nodata), `mask` uint8 (0/1, 255 = nodata), `valid` uint8 (0/1),
dims (y, x), chunks = the engine's block, so each block's core is one chunk-aligned region write
(lock-free across workers). Georeferenced scenes get pixel-centre `x`/`y` coordinates, a CF
`spatial_ref` (crs_wkt, GeoTransform) that rioxarray reads, and GeoZarr `proj:`/`spatial:` attributes.
Metadata is written through xarray so that `xr.open_zarr` and rioxarray read it back unchanged.
"""

from __future__ import annotations

from typing import Any

import numpy as np

PROBABILITY, MASK, VALID = "probability", "mask", "valid"
MASK_NODATA = 255


def pixel_centres(
    transform: tuple[float, ...], shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) pixel-centre coordinates of a grid without rotation, computed exactly as rioxarray
    does (the transform shifted by half a pixel, then applied), so coordinates compare equal."""
    from affine import Affine

    centre = Affine(*transform[:6]) * Affine.translation(0.5, 0.5)
    h, w = shape
    xs, _ = centre @ (np.arange(w), np.zeros(w))
    _, ys = centre @ (np.zeros(h), np.arange(h))
    return np.asarray(ys, dtype=np.float64), np.asarray(xs, dtype=np.float64)


def geozarr_attrs(
    crs_wkt: str | None, transform: tuple[float, ...], shape: tuple[int, int]
) -> dict:
    """GeoZarr `proj:` and `spatial:` group attributes (empty `proj:` without a CRS)."""
    attrs: dict[str, Any] = {
        "spatial:dimensions": ["y", "x"],
        "spatial:shape": [int(shape[0]), int(shape[1])],
        "spatial:transform": [float(v) for v in transform[:6]],
        "spatial:registration": "pixel",
    }
    if crs_wkt:
        from pyproj import CRS

        crs = CRS.from_wkt(crs_wkt)
        epsg = crs.to_epsg()
        if epsg is not None:
            attrs["proj:code"] = f"EPSG:{epsg}"
        attrs["proj:wkt2"] = crs.to_wkt()
    return attrs


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
    ds[MASK].attrs.update(
        long_name="change mask", flag_values=[0, 1], flag_meanings="unchanged changed"
    )
    ds[VALID].attrs.update(
        long_name="valid pixel mask", flag_values=[0, 1], flag_meanings="nodata valid"
    )
    if crs_wkt:
        from affine import Affine

        ds = ds.rio.write_crs(crs_wkt).rio.write_transform(Affine(*transform[:6]))
        ds = ds.rio.write_coordinate_system()
        for name in (PROBABILITY, MASK, VALID):  # CF link that rioxarray follows to the CRS
            ds[name].attrs["grid_mapping"] = "spatial_ref"
            ds[name].encoding["coordinates"] = "spatial_ref"  # a plain open_zarr keeps it a coord
    ds.attrs.update(geozarr_attrs(crs_wkt, transform, shape))
    ds.attrs.update(attrs or {})
    encoding: dict[str, dict[str, Any]] = {
        PROBABILITY: {"chunks": chunks, "fill_value": np.nan, "_FillValue": np.nan},
        MASK: {"chunks": chunks, "fill_value": MASK_NODATA, "_FillValue": MASK_NODATA},
        VALID: {"chunks": chunks, "fill_value": 0},  # 0 is data here, not a missing value
    }
    ds.to_zarr(store, mode="w", compute=False, consolidated=False, zarr_format=3, encoding=encoding)


def write_region(
    store: Any,
    y0: int,
    x0: int,
    probability: np.ndarray,
    mask: np.ndarray,
    valid: np.ndarray,
) -> None:
    """Write one block core at (y0, x0): a chunk-aligned region, so concurrent blocks never clash."""
    import zarr

    group = zarr.open_group(store, mode="r+", zarr_format=3)
    h, w = probability.shape
    region = (slice(y0, y0 + h), slice(x0, x0 + w))
    for name, arr in ((PROBABILITY, probability), (MASK, mask), (VALID, valid)):
        group[name][region] = arr


def read_array(store: Any, name: str) -> np.ndarray:
    """A whole array (tests and small scenes only: products read chunk by chunk)."""
    import zarr

    return np.asarray(zarr.open_group(store, mode="r", zarr_format=3)[name][...])
