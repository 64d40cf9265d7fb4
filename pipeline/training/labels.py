"""Label rasters: their encoding decided once per file, their pixels read on the image grid.

Encoding rule (decided from every value of the whole file, or of a whole split, never per window:
a window of a 0/1 label holding only 0 and 255 would read its ignore pixels as change): if the
value 1 occurs, labels are 0/1 and 255 is *ignore*; otherwise 0/255 and 255 is *change*. A file
that holds only 255 is refused (all-ignore or all-change: it used to train as all change), and so
is any other value (NaN, 0.5, 128: binarise first). A declared nodata value is ignore.

Grids: a label on another grid than its image (shifted, another CRS) is warped onto the image grid
with nearest neighbour (class values are never interpolated) and pixels outside its footprint are
ignore; a label that cannot be placed (no CRS on one side, a different size without CRS, no overlap)
is refused. Before, only shapes were compared: a label shifted 200 px trained silently.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any, Literal

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds

from pipeline.errors import InputError
from pipeline.io import storage
from pipeline.io.grid import GridInfo, same_grid

IGNORE = 255
Encoding = Literal["0/1", "0/255"]
_STRIP_ROWS = 1024  # whole-file scans read strips of this many rows (bounded memory)


def label_encoding(values: Iterable[float], source: str) -> Encoding:
    """Decide 0/1 (255 = ignore) or 0/255 (255 = change) from the values present (module doc)."""
    present = {float(v) for v in values}
    if any(np.isnan(v) for v in present):
        raise InputError(
            source, "label holds NaN: declare it as the file's nodata (ignore) or binarise"
        )
    extra = sorted(present - {0.0, 1.0, float(IGNORE)})
    if extra:
        shown = sorted(present)[:8]
        raise InputError(
            source,
            f"label values {[int(v) if v.is_integer() else v for v in shown]} are neither 0/1 "
            "(255 = ignore) nor 0/255; binarise the labels first",
        )
    if present == {float(IGNORE)}:
        raise InputError(
            source,
            "label holds only 255: all ignore (0/1 labels) or all change (0/255)? Give a label "
            "with 0 and 1 (or 0 and 255) pixels",
        )
    return "0/1" if 1.0 in present else "0/255"


def decode_label(raw: np.ndarray, encoding: Encoding, nodata: float | None = None) -> np.ndarray:
    """Raw label band -> uint8 0/1/255 (255 = ignore)."""
    raw = np.asarray(raw)
    if encoding == "0/1":
        out = np.where(raw == 1, 1, np.where(raw == 0, 0, IGNORE)).astype(np.uint8)
    else:
        out = (raw == 255).astype(np.uint8)
    if nodata is not None:  # a declared nodata always wins over the class meaning of its value
        out[np.isnan(raw) if np.isnan(nodata) else raw == nodata] = IGNORE
    return out


def _open(uri: str) -> Any:

    try:
        with storage.gdal_env(uri), warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(storage.gdal_path(uri))
    except RasterioIOError as exc:
        raise InputError(uri, f"not a readable raster ({storage.redact(str(exc))})") from None


def file_values(uri: str) -> tuple[set[float], float | None]:
    """Every distinct value of a label's first band except its nodata (the whole file, in strips),
    and the nodata; a label with several different bands is refused."""

    values: set[float] = set()
    with storage.gdal_env(uri), _open(uri) as src:
        nodata = None if src.nodata is None else float(src.nodata)
        for r0 in range(0, src.height, _STRIP_ROWS):
            win = ((r0, min(src.height, r0 + _STRIP_ROWS)), (0, src.width))
            bands = src.read(window=win)
            if bands.shape[0] != 1 and not all(np.array_equal(bands[0], b) for b in bands[1:]):
                raise InputError(
                    uri, f"a label needs one band, got {bands.shape[0]} different bands"
                )
            uniq = np.unique(bands[0])
            if nodata is not None:
                uniq = uniq[~np.isnan(uniq)] if np.isnan(nodata) else uniq[uniq != nodata]
            values |= {float(v) for v in uniq}
    return values, nodata


def split_encoding(uris: Iterable[str], source: str) -> Encoding:
    """One encoding for a set of label files (a folder split, a chip set) from all their values."""
    values: set[float] = set()
    for uri in uris:
        values |= file_values(uri)[0]
    return label_encoding(values, source)


class LabelReader:
    """A label read on an image grid (``pipeline.io.grid.GridInfo``): windows of the image grid give
    (raw values, outside-footprint mask), warped with nearest when the grids differ."""

    def __init__(self, uri: str, grid: Any):

        self.uri, self.grid = uri, grid
        with storage.gdal_env(uri), _open(uri) as src:
            own = GridInfo(src.crs, src.transform, (src.height, src.width))
            self.nodata = None if src.nodata is None else float(src.nodata)
            self.dtype = src.dtypes[0]
        if own.crs is None and src.transform.is_identity:
            own = GridInfo(None, own.transform, own.shape)
        self.warped = not same_grid(own, grid) and not (
            own.crs is None and grid.crs is None and own.shape == grid.shape
        )
        if self.warped:
            self._check_placeable(own)

    def _check_placeable(self, own: Any) -> None:

        if own.crs is None or self.grid.crs is None:
            which = "the label" if own.crs is None else "the image"
            raise InputError(
                self.uri,
                f"label grid {own.shape} differs from the image grid {self.grid.shape} and "
                f"{which} has no CRS: cannot place the label; give it the image's grid",
            )
        lb = transform_bounds(own.crs, self.grid.crs, *own.bounds, densify_pts=21)
        ib = self.grid.bounds
        if min(ib[2], lb[2]) <= max(ib[0], lb[0]) or min(ib[3], lb[3]) <= max(ib[1], lb[1]):
            raise InputError(self.uri, "the label does not overlap its image")

    def read(self, window: tuple[int, int, int, int] | None) -> tuple[np.ndarray, np.ndarray]:
        """(raw H×W values, H×W bool outside the label's footprint) of an image-grid window."""

        h, w = self.grid.shape
        r0, r1, c0, c1 = window or (0, h, 0, w)
        win = ((r0, r1), (c0, c1))
        with storage.gdal_env(self.uri), _open(self.uri) as src:
            if not self.warped:
                if r1 > src.height or c1 > src.width:
                    raise InputError(
                        self.uri,
                        f"window {r0}:{r1},{c0}:{c1} reaches outside the {src.height}×"
                        f"{src.width} raster",
                    )
                return src.read(1, window=win), np.zeros((r1 - r0, c1 - c0), bool)
            with WarpedVRT(
                src,
                crs=self.grid.crs,
                transform=self.grid.transform,
                width=w,
                height=h,
                resampling=Resampling.nearest,
                add_alpha=True,
            ) as vrt:
                raw = vrt.read(1, window=win)
                outside = vrt.read(vrt.count, window=win) == 0
        return raw, outside
