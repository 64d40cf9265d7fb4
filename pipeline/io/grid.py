"""Grid checks and SAR-onto-optical alignment, with memory bounded by the window read.

When the grids differ, SAR is not reprojected as a whole: `WarpedScene.read_window` warps just the
requested window of the optical grid with a GDAL `WarpedVRT`, which is exact (the same pixels
whatever the window) and needs memory for that window only, whatever the scene size.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from affine import Affine
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds

from pipeline.config import DetectConfig
from pipeline.errors import InputError
from pipeline.geometry import PixelBox
from pipeline.io import storage
from pipeline.io.scene import Scene, lazy_dataarray, read_failure

_CHUNK = 1024


@dataclass(frozen=True)
class GridInfo:
    """A pixel grid: CRS (or None for plain images), affine transform, (H, W)."""

    crs: Any
    transform: Affine
    shape: tuple[int, int]

    @classmethod
    def of(cls, scene: Any) -> GridInfo:
        """The grid of a scene (or of anything with crs, transform and shape)."""
        h, w = scene.shape
        return cls(scene.crs, scene.transform, (int(h), int(w)))

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in CRS units, whatever the sign of the pixel sizes."""
        h, w = self.shape
        xs, ys = zip(
            *(self.transform @ (c, r) for r, c in ((0, 0), (0, w), (h, 0), (h, w))), strict=True
        )
        return (min(xs), min(ys), max(xs), max(ys))


def _same_transform(a: Affine, b: Affine) -> bool:
    """Equal up to 1e-6 of a pixel in scale/shear and 1e-3 of a pixel in origin."""
    px = max(abs(a.a), abs(a.e), abs(a.b), abs(a.d), 1e-300)
    scale_ok = all(
        abs(x - y) <= 1e-6 * px for x, y in zip(a[:2] + a[3:5], b[:2] + b[3:5], strict=True)
    )
    return scale_ok and abs(a.c - b.c) <= 1e-3 * px and abs(a.f - b.f) <= 1e-3 * px


def same_grid(a: Any, b: Any) -> bool:
    """Same CRS, transform and shape (Scenes or GridInfos)."""
    ga, gb = (x if isinstance(x, GridInfo) else GridInfo.of(x) for x in (a, b))
    if tuple(ga.shape) != tuple(gb.shape):
        return False
    if (ga.crs is None) != (gb.crs is None) or (ga.crs is not None and ga.crs != gb.crs):
        return False
    return _same_transform(ga.transform, gb.transform)


class WarpedScene:
    """SAR seen on the optical grid: the Scene interface, each window warped on demand."""

    def __init__(self, source: Scene, grid: GridInfo, resampling: str, scale: tuple[float, float]):
        self.source = source
        # GDAL derives the resampling kernel's scale from each request's windows, so a pixel's value
        # would depend on the window; one global (XSCALE, YSCALE) makes every read identical.
        self.scale = (float(f"{scale[0]:.9g}"), float(f"{scale[1]:.9g}"))
        self.grid = grid
        self.resampling = resampling
        self.uri = source.uri
        self.role = source.role
        self.crs = grid.crs
        self.transform = grid.transform
        self.shape: tuple[int, int] = grid.shape
        self.count = source.count
        self.dtype = source.dtype
        self.bands = source.bands
        self.units = source.units
        self.band_names = source.band_names
        self.acquired = source.acquired
        self.decoding = source.decoding  # applied after each warp
        # Outside the SAR footprint GDAL writes the fill: nodata, or 0 (SAR zero fill).
        self.nodata = source.nodata
        self.block_shape = (min(_CHUNK, self.shape[0]), min(_CHUNK, self.shape[1]))
        self._data = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_data": None}

    def __repr__(self) -> str:
        return f"WarpedScene({self.uri!r} onto {self.shape} grid, resampling={self.resampling!r})"

    @property
    def fill_value(self) -> float:
        """What outside-the-scene pixels read as: the nodata value, else 0."""
        return 0 if self.nodata is None else self.nodata

    def read_window(self, window: PixelBox) -> np.ndarray:
        """bands×h×w of the SAR warped onto `window` of the optical grid (boundless)."""
        out = np.full((len(self.bands), *window.shape), self.fill_value, dtype=self.dtype)
        inner = window.clip(self.shape)
        if inner is None:
            return out
        try:  # the file's stored values are warped, then decoded (`pipeline.io.decode`)
            part = self.source.decode(self._warp(inner, self.source.raw_fill))
        except RasterioIOError as exc:
            self.source.datasets.discard()
            raise read_failure(self.uri, inner, exc) from None
        r, c = inner.y0 - window.y0, inner.x0 - window.x0
        out[:, r : r + inner.height, c : c + inner.width] = part
        return out

    def _warp(self, inner: PixelBox, src_nodata: float) -> np.ndarray:
        with storage.gdal_env(self.source.path), warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with WarpedVRT(
                self.source.datasets.get(),
                crs=self.grid.crs,
                transform=self.grid.transform,
                width=self.shape[1],
                height=self.shape[0],
                resampling=Resampling[self.resampling],
                src_nodata=src_nodata,
                nodata=src_nodata,
                tolerance=1e-9,  # ~exact transformer: pixel values never depend on the window
                XSCALE=repr(self.scale[0]),
                YSCALE=repr(self.scale[1]),
            ) as vrt:
                return vrt.read(self.bands, window=inner.to_rasterio())

    @property
    def data(self):
        """Lazy band×y×x DataArray on the optical grid (dask; each chunk is one warped window)."""
        if self._data is None:
            self._data = lazy_dataarray(self, self.block_shape)
        return self._data


@dataclass
class AlignedPair:
    """Optical and SAR on one grid (the optical's); `resampling` is None when nothing was warped."""

    optical: Scene
    sar: Scene | WarpedScene
    resampling: str | None
    grid: GridInfo

    @property
    def reprojected(self) -> bool:
        """True when the SAR was warped (it did not share the optical grid)."""
        return self.resampling is not None


def _fmt_bounds(b: tuple[float, float, float, float]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in b) + ")"


def align_pair(optical: Scene, sar: Scene, cfg: DetectConfig) -> AlignedPair:
    """Put SAR on the optical grid; InputError (naming both files) if that is impossible."""
    grid = GridInfo.of(optical)
    both = f"{optical.uri} and {sar.uri}"
    if same_grid(optical, sar):
        return AlignedPair(optical, sar, None, grid)
    if optical.crs is None and sar.crs is None:
        raise InputError(
            both,
            f"neither has a CRS and their sizes differ ({optical.shape} vs {sar.shape}): "
            "plain images must have the same size",
        )
    if (optical.crs is None) != (sar.crs is None):
        which = optical.uri if optical.crs is None else sar.uri
        raise InputError(both, f"only one has a CRS ({which} has none): cannot align them")
    sar_grid = GridInfo.of(sar)
    sb = transform_bounds(sar.crs, optical.crs, *sar_grid.bounds, densify_pts=21)
    ob = grid.bounds
    if min(ob[2], sb[2]) <= max(ob[0], sb[0]) or min(ob[3], sb[3]) <= max(ob[1], sb[1]):
        raise InputError(
            both,
            f"the scenes do not overlap: optical bounds {_fmt_bounds(ob)}, SAR bounds "
            f"{_fmt_bounds(sar_grid.bounds)} ({sar.crs.to_string()}) = {_fmt_bounds(sb)} in "
            f"{optical.crs.to_string()}",
        )
    resampling = cfg.grid.resampling
    if sar.decoding.complex_mode is not None and resampling != "nearest":
        raise InputError(
            both,
            f"complex SAR on another grid: {resampling} resampling would mix phases before the "
            "intensity is taken; put the SLC on the optical grid first or set "
            "grid.resampling=nearest",
        )
    # SAR pixel size measured in the optical CRS over the whole scene, over the optical pixel size.
    sx = (sb[2] - sb[0]) / sar.shape[1] / abs(optical.transform.a or optical.transform.b)
    sy = (sb[3] - sb[1]) / sar.shape[0] / abs(optical.transform.e or optical.transform.d)
    warped = WarpedScene(sar, grid, resampling, (sx, sy))
    return AlignedPair(optical, warped, resampling, grid)
