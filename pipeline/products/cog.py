"""Cloud-optimised GeoTIFFs of the change probability and the change mask.

Two steps, both with memory bounded by GDAL's block cache, never by the scene:
1. the Zarr chunks are written window by window into a plain tiled GeoTIFF (uncompressed, so partial
   tiles of any chunk size can be written without read-modify-write of compressed tiles);
2. GDAL's COG driver turns it into a COG: DEFLATE + predictor, internal overviews (average for the
   probability, nearest for the mask so overviews hold only 0/1/255) down to less than one block.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window

from pipeline.products.metadata import ProductMetadata

GDAL_ENV = {"GDAL_NUM_THREADS": "ALL_CPUS"}  # the block cache is bounded by storage


@dataclass(frozen=True)
class Layer:
    """How one Zarr array becomes one COG."""

    dtype: str
    nodata: float
    overview_resampling: str  # GDAL name: AVERAGE / NEAREST


PROBABILITY_LAYER = Layer("float32", float("nan"), "AVERAGE")  # change_prob.tif
MASK_LAYER = Layer("uint8", 255, "NEAREST")  # change_mask.tif: overviews keep 0/1/255 only


@contextlib.contextmanager
def plain_image_ok(meta: ProductMetadata) -> Iterator[None]:
    """Silence rasterio's NotGeoreferencedWarning for plain images: no CRS is expected there."""
    with warnings.catch_warnings():
        if not georef_profile(meta):
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
        yield


def georef_profile(meta: ProductMetadata) -> dict:
    """CRS and transform for rasterio; plain images (no CRS, identity grid) get neither."""
    if meta.crs is None and meta.affine == Affine.identity():
        return {}
    profile: dict = {"transform": meta.affine}
    if meta.crs is not None:
        profile["crs"] = CRS.from_wkt(meta.crs)
    return profile


class TiledWriter:
    """Context manager: an intermediate tiled GeoTIFF filled window by window."""

    def __init__(self, path: Path, layer: Layer, meta: ProductMetadata, blocksize: int):
        self.path = path
        height, width = meta.shape
        self._profile = {
            "driver": "GTiff",
            "width": width,
            "height": height,
            "count": 1,
            "dtype": layer.dtype,
            "nodata": layer.nodata,
            "tiled": True,
            "blockxsize": blocksize,
            "blockysize": blocksize,
            "BIGTIFF": "IF_SAFER",
            **georef_profile(meta),
        }
        self._dtype = np.dtype(layer.dtype)
        self._ds: rasterio.io.DatasetWriter | None = None

    def __enter__(self) -> TiledWriter:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)  # plain images: expected
            self._ds = rasterio.open(self.path, "w", **self._profile)
        return self

    def write(self, row_off: int, col_off: int, data: np.ndarray) -> None:
        assert self._ds is not None, "use TiledWriter as a context manager"
        window = Window(col_off, row_off, data.shape[1], data.shape[0])
        self._ds.write(data.astype(self._dtype, copy=False), 1, window=window)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._ds is not None:
            self._ds.close()


def to_cog(src: Path, dst: Path, layer: Layer, blocksize: int, level: int = 1) -> Path:
    """Copy a tiled GeoTIFF into a COG with overviews until the smallest is under one block."""
    rasterio.shutil.copy(
        str(src),
        str(dst),
        driver="COG",
        COMPRESS="DEFLATE",
        LEVEL=level,
        PREDICTOR="YES",  # floating-point predictor for float32, horizontal for uint8
        BLOCKSIZE=blocksize,
        OVERVIEWS="IGNORE_EXISTING",
        OVERVIEW_RESAMPLING=layer.overview_resampling,
        NUM_THREADS="ALL_CPUS",
        STATISTICS="NO",
        BIGTIFF="IF_SAFER",
    )
    return dst
