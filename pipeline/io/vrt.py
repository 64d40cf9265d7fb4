"""Stack bands of several rasters into one VRT, in memory: Sentinel-2 as delivered is a file per band.

GDAL opens a VRT given as its XML text, so a band list needs no file on disk: the XML travels in the
run plan to every Dask worker (a few kB), and each band is read from its own file, window by window,
through the same virtual file systems as any input (`pipeline.io.remote`). The files must share one
grid and dtype; a 20 m band beside 10 m ones is refused by name (warping bands is a choice the user
makes, e.g. with `gdalbuildvrt -resolution highest`, not one the reader makes silently).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape

import rasterio
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

from pipeline.errors import InputError
from pipeline.io import remote, storage

_GDAL_TYPES = {
    "uint8": "Byte",
    "int8": "Int8",
    "uint16": "UInt16",
    "int16": "Int16",
    "uint32": "UInt32",
    "int32": "Int32",
    "float32": "Float32",
    "float64": "Float64",
}


@dataclass(frozen=True)
class BandSource:
    """One band of the stack: a file (URI as given), its 1-based band, the name the band gets."""

    uri: str
    band: int = 1
    name: str | None = None


@dataclass(frozen=True)
class Header:
    """What the stack needs to know of one source file."""

    crs: Any
    transform: Any
    shape: tuple[int, int]
    count: int
    dtype: str
    nodata: float | None
    block: tuple[int, int]
    tags: dict[str, str]


def read_header(uri: str) -> Header:
    """The header of one source (InputError naming it, redacted, when it cannot be opened)."""
    try:
        with (
            storage.gdal_env(uri),
            warnings.catch_warnings(),
            rasterio.open(storage.gdal_path(uri)) as src,
        ):
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return Header(
                crs=src.crs,
                transform=src.transform,
                shape=(src.height, src.width),
                count=src.count,
                dtype=src.dtypes[0],
                nodata=src.nodata,
                block=(int(src.block_shapes[0][0]), int(src.block_shapes[0][1])),
                tags=dict(src.tags()),
            )
    except RasterioIOError as exc:
        raise InputError(
            remote.redact_uri(uri), f"cannot open as a raster ({storage.redact(str(exc))})"
        ) from None


def source_path(uri: str) -> str:
    """How the VRT names a source: its GDAL path, made absolute for local files."""
    if remote.is_remote_input(uri):
        return storage.gdal_path(uri)
    return os.path.abspath(uri.removeprefix("file://"))


def stack_xml(bands: list[BandSource]) -> tuple[str, Header]:
    """The VRT XML stacking `bands` as bands 1..n, and the header of the first source."""
    if not bands:
        raise InputError("band list", "needs at least one raster")
    headers: dict[str, Header] = {}
    for b in bands:
        if b.uri not in headers:
            headers[b.uri] = read_header(b.uri)
    first = headers[bands[0].uri]
    h, w = first.shape
    for b in bands:
        hd = headers[b.uri]
        shown = remote.redact_uri(b.uri)
        if hd.shape != first.shape or hd.crs != first.crs:
            raise InputError(
                shown,
                f"{hd.shape[0]}×{hd.shape[1]} px is not on the grid of "
                f"{remote.redact_uri(bands[0].uri)} ({h}×{w} px): stack only bands of one grid",
            )
        if not hd.transform.almost_equals(first.transform):
            raise InputError(shown, f"not on the grid of {remote.redact_uri(bands[0].uri)}")
        if hd.dtype != first.dtype:
            raise InputError(
                shown, f"dtype {hd.dtype} differs from {first.dtype} of the first band"
            )
        if not 1 <= b.band <= hd.count:
            raise InputError(shown, f"has no band {b.band} (it has {hd.count})")
    gdal_type = _GDAL_TYPES.get(first.dtype)
    if gdal_type is None:
        raise InputError(remote.redact_uri(bands[0].uri), f"dtype {first.dtype} cannot be stacked")
    lines = [f'<VRTDataset rasterXSize="{w}" rasterYSize="{h}">']
    if first.crs is not None:
        lines.append(f"  <SRS>{escape(first.crs.to_wkt())}</SRS>")
    gt = first.transform.to_gdal()
    lines.append("  <GeoTransform>" + ", ".join(repr(float(v)) for v in gt) + "</GeoTransform>")
    for i, b in enumerate(bands, start=1):
        hd = headers[b.uri]
        lines.append(f'  <VRTRasterBand dataType="{gdal_type}" band="{i}">')
        if b.name:
            lines.append(f"    <Description>{escape(b.name)}</Description>")
        if hd.nodata is not None:
            lines.append(f"    <NoDataValue>{hd.nodata!r}</NoDataValue>")
        lines += [
            "    <SimpleSource>",
            f'      <SourceFilename relativeToVRT="0">{escape(source_path(b.uri))}</SourceFilename>',
            f"      <SourceBand>{b.band}</SourceBand>",
            f'      <SourceProperties RasterXSize="{w}" RasterYSize="{h}" DataType="{gdal_type}"'
            f' BlockXSize="{hd.block[1]}" BlockYSize="{hd.block[0]}" />',
            f'      <SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}" />',
            f'      <DstRect xOff="0" yOff="0" xSize="{w}" ySize="{h}" />',
            "    </SimpleSource>",
            "  </VRTRasterBand>",
        ]
    lines.append("</VRTDataset>")
    return "\n".join(lines) + "\n", first
