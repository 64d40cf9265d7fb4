"""What the COGs of a run are: their layers (dtype, nodata, overview resampling, how a GIS shows
them), the tags they carry, and GDAL's copy into a COG for the multi-band routing maps.

The probability and mask COGs are written by `pipeline.products.cog_writer` straight from the
store's chunks: DEFLATE + predictor, internal overviews (average for the probability, nearest for
the mask so overviews hold only 0/1/255) down to less than one block.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning

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
