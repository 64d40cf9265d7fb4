"""A scene read at a small size (a quick-look) by box averaging, one source window at a time.

GDAL's own decimated read (`out_shape` with average resampling) is the right tool when the file
has overviews: it reads the nearest one. Without overviews it decodes the whole scene and, at
16384² × 4 bands, took 20.6 s (optical) and its SAR twin through a WarpedVRT 5.8 s and +287 MiB
of peak RSS, the largest scene-dependent allocation of a run (`m2cd bench memory`, issue 12
point 8). Reading windows of about `WINDOW_PX` source pixels and averaging them in numpy keeps the
memory to one window whatever the scene size.

Output pixel (i, j) averages the valid source pixels of rows ⌊i·H/h⌋ … ⌊(i+1)·H/h⌋ − 1 and the
same for columns (whole pixels: GDAL weights the partial ones at the edges, a sub-pixel
difference in a preview); it is invalid when none of them is.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import rasterio
from rasterio.enums import MaskFlags, Resampling
from rasterio.windows import Window

WINDOW_PX = 1 << 20  # ~1 Mpx a window: 3 bands of uint16 are 6 MiB, their float64 sums 24 MiB

Validity = Callable[[np.ndarray], np.ndarray]  # bands×h×w raw values → h×w usable


def edges(size: int, out: int) -> np.ndarray:
    """The `out + 1` source offsets bounding each output pixel along one axis."""
    return (np.arange(out + 1, dtype=np.int64) * size) // out


def _box_sum(x: np.ndarray, rows: np.ndarray, cols: np.ndarray, dtype: type) -> np.ndarray:
    """Sum over the boxes of the (local, 0-based) edges along the last two axes.

    Boxes of one size (the scene a multiple of the quick-look, e.g. 4096² → 1024²): `f` strided
    slices added, rows first, 3.4 ms against 14-25 ms for `reduceat` on 3×1024² uint16 with
    4×4 boxes (numpy's reduceat over many short runs is slow). Uneven boxes: `reduceat`, columns
    first (along the contiguous axis, 4.1 ms against 11.8 ms rows first). Integer rasters sum in
    int64, exact either way."""
    if _even(rows) and _even(cols):
        return _strided_sum(_strided_sum(x, rows, -2, dtype), cols, -1, dtype)
    by_col = np.add.reduceat(x, cols[:-1], axis=-1, dtype=dtype)
    return np.add.reduceat(by_col, rows[:-1], axis=-2)


def _even(bounds: np.ndarray) -> bool:
    sizes = np.diff(bounds)
    return bool(bounds[0] == 0 and (sizes == sizes[0]).all())


def _strided_sum(x: np.ndarray, bounds: np.ndarray, axis: int, dtype: type) -> np.ndarray:
    """Sums of the equal runs of `bounds` along `axis`: one slice per offset in a run, added."""
    f, n = int(bounds[1] - bounds[0]), len(bounds) - 1

    def part(k: int) -> np.ndarray:
        index = [slice(None)] * x.ndim
        index[axis] = slice(k, k + f * n, f)
        return x[tuple(index)]

    total = part(0).astype(dtype)
    for k in range(1, f):
        total += part(k)
    return total


def _usable(data: np.ma.MaskedArray, valid: Validity) -> np.ndarray:
    """GDAL's mask (nodata, internal mask or alpha band) and the caller's rule, on every band."""
    return ~np.ma.getmaskarray(data).any(axis=0) & valid(data.data)


def read_box_mean(
    src: rasterio.io.DatasetReader,
    bands: list[int],
    out_shape: tuple[int, int],
    valid: Validity,
) -> tuple[np.ndarray, np.ndarray]:
    """(bands×h×w float32 mean over each box's valid pixels, h×w bool: the box had one).

    A pixel counts when `valid` accepts it (it must check the nodata value itself) and, for a
    file with a mask band or an alpha band, GDAL's mask keeps it in every band.
    A file with overviews is read by GDAL from the nearest one (average resampling, the mask
    from its nodata), since decoding the full resolution would read it all again.
    """
    h, w = out_shape
    if src.overviews(bands[0]):
        data = src.read(
            bands, out_shape=(len(bands), h, w), resampling=Resampling.average, masked=True
        )
        ok = _usable(data, valid)
        return np.where(ok, data.data, 0).astype(np.float32), ok
    row_edges, col_edges = edges(src.height, h), edges(src.width, w)
    # output boxes per window, so a window spans about WINDOW_PX source pixels
    box = max(1, round((WINDOW_PX * h * w / (src.height * src.width)) ** 0.5))
    # GDAL's mask costs a second pass over each window (3.65 s against ~1.5 s at 16384²): only
    # for files whose mask is more than their nodata value, which `valid` checks itself
    masked = any(
        MaskFlags.per_dataset in flags or MaskFlags.alpha in flags
        for flags in (src.mask_flag_enums[b - 1] for b in bands)
    )
    wide = np.int64 if np.dtype(src.dtypes[bands[0] - 1]).kind in "iub" else np.float64
    mean = np.zeros((len(bands), h, w), np.float32)
    any_valid = np.zeros((h, w), bool)
    for i0 in range(0, h, box):
        i1 = min(h, i0 + box)
        r0, r1 = int(row_edges[i0]), int(row_edges[i1])
        for j0 in range(0, w, box):
            j1 = min(w, j0 + box)
            c0, c1 = int(col_edges[j0]), int(col_edges[j1])
            window = Window(c0, r0, c1 - c0, r1 - r0)
            if masked:
                data = src.read(bands, window=window, masked=True)
                raw, ok = data.data, _usable(data, valid)
            else:
                raw = src.read(bands, window=window)
                ok = valid(raw)
            rows, cols = row_edges[i0 : i1 + 1] - r0, col_edges[j0 : j1 + 1] - c0
            n = _box_sum(ok, rows, cols, np.int64)
            sums = _box_sum(np.where(ok, raw, 0), rows, cols, wide)
            any_valid[i0:i1, j0:j1] = n > 0
            mean[:, i0:i1, j0:j1] = sums / np.maximum(n, 1)
    return mean, any_valid
