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
    """How one Zarr array becomes one COG, and how a GIS shows it without a style file."""

    dtype: str
    nodata: float
    overview_resampling: str  # GDAL name: AVERAGE / NEAREST
    description: str  # band description: QGIS's layer panel and `rio info` show it
    units: str = ""
    colormap: dict[int, tuple[int, int, int, int]] | None = None  # a palette band (uint8 only)


# Palette of the mask: QGIS and ArcGIS render a paletted band in these colours by default.
# A TIFF palette holds RGB only (GDAL reads every alpha back as 255); nodata is transparent
# through the band's nodata value instead.
MASK_COLORS: dict[int, tuple[int, int, int, int]] = {
    0: (255, 255, 255, 255),  # no change: white
    1: (230, 25, 25, 255),  # change: the same red as the quick-look and the map
    255: (128, 128, 128, 255),  # nodata (also the band's nodata value: shown transparent)
}
MASK_CLASSES = {0: "no change", 1: "change", 255: "nodata"}

PROBABILITY_LAYER = Layer(  # change_prob.tif
    "float32", float("nan"), "AVERAGE", "change probability (0-1; NaN nodata)", units="1"
)
MASK_LAYER = Layer(  # change_mask.tif: overviews keep 0/1/255 only
    "uint8", 255, "NEAREST", "change mask (0 no change, 1 change, 255 nodata)", "", MASK_COLORS
)


def product_tags(meta: ProductMetadata) -> dict[str, str]:
    """Dataset tags shared by both COGs: acquisition dates (when known) and model provenance.

    Unknown dates are left out rather than written empty: a reader tells "unknown" by absence.
    The model by its digest only: the same weights give the same COG whether they were named
    `tiny` or loaded from `s3://.../ckpt`; no run key or config hash either (they change with
    the block size, and the COGs must not).
    """
    tags = {"M2CD_MODEL_DIGEST": meta.model_digest}
    if meta.optical_datetime is not None:
        tags["M2CD_OPTICAL_DATETIME"] = meta.optical_datetime.isoformat()
    if meta.sar_datetime is not None:
        tags["M2CD_SAR_DATETIME"] = meta.sar_datetime.isoformat()
    return tags


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
        self._layer = layer
        self._tags = product_tags(meta)
        self._ds: rasterio.io.DatasetWriter | None = None

    def __enter__(self) -> TiledWriter:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)  # plain images: expected
            self._ds = rasterio.open(self.path, "w", **self._profile)
        # GDAL's COG driver copies tags, descriptions, units and the palette from this file.
        self._ds.update_tags(**self._tags)
        self._ds.set_band_description(1, self._layer.description)
        if self._layer.units:
            self._ds.set_band_unit(1, self._layer.units)
        if self._layer.colormap is not None:
            self._ds.write_colormap(1, self._layer.colormap)
        return self

    def write(self, row_off: int, col_off: int, data: np.ndarray) -> None:
        """Write one block of band 1 at its scene offset: blocks arrive one at a time, so a whole-
        scene array is never held."""
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
