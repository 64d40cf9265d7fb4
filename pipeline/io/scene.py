"""Open an optical or SAR scene lazily (local or `s3://`) and read windows of it, boundless.

A `Scene` holds only the header (grid, bands, dtype, nodata, SAR units); pixels are read per
window, so memory is bounded by the window, never by the scene. Plain PNG/TIFF without a CRS are
accepted with a warning: their transform is rasterio's identity (pixel = 1 unit, row/col axes) and
products then carry no CRS.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal
from xml.sax.saxutils import escape

import numpy as np
import rasterio
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

from pipeline.config import DetectConfig
from pipeline.errors import InputError
from pipeline.geometry import PixelBox
from pipeline.io import storage
from pipeline.io.normalize import SarUnits, infer_sar_units

Role = Literal["optical", "sar"]
_TARGET_CHUNK = 1024  # dask chunks: whole multiples of the file's blocks, about this many pixels


class ThreadDatasets:
    """One open rasterio dataset of a file per thread, kept across window reads.

    Reopening per window threw GDAL's block cache away: overlapping tile strips decoded the same
    compressed blocks again (2.7× the read time of a 2048² pair). Datasets are not thread-safe,
    hence one per thread; each closes when its thread or owner goes away.
    """

    def __init__(self, path: str):
        self.path = path
        self._local = threading.local()

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        ThreadDatasets.__init__(self, state["path"])

    def get(self) -> Any:
        """This thread's dataset; call inside the file's GDAL environment."""
        ds = getattr(self._local, "ds", None)
        if ds is None or ds.closed:
            storage.bound_gdal_cache()  # open datasets keep their blocks: bound the cache first
            ds = self._local.ds = rasterio.open(self.path)
        return ds

    def discard(self) -> None:
        """Close this thread's dataset (after a failed read: the next one reopens)."""
        ds = getattr(self._local, "ds", None)
        self._local.ds = None
        if ds is not None:
            ds.close()


@dataclass
class Scene:
    """Header of one opened raster plus boundless window reads of its selected bands."""

    uri: str
    role: Role
    crs: Any  # rasterio CRS or None
    transform: Affine
    shape: tuple[int, int]
    count: int  # bands in the file
    dtype: str
    nodata: float | None
    bands: list[int]  # 1-based indexes actually used
    block_shape: tuple[int, int]
    units: SarUnits | None = None  # SAR only: resolved units (never "auto")
    _data: Any = field(default=None, repr=False)
    datasets: ThreadDatasets = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.datasets = ThreadDatasets(self.path)

    def __getstate__(self) -> dict[str, Any]:
        """Pickle the header only (scenes travel to Dask/Prefect workers); `data` is rebuilt."""
        return {**self.__dict__, "_data": None}

    @property
    def fill_value(self) -> float:
        """What boundless reads put outside the scene: nodata, else 0 (never counted valid)."""
        return 0 if self.nodata is None else self.nodata

    @property
    def path(self) -> str:
        """The path GDAL opens (/vsis3/ for s3:// URIs)."""
        return storage.gdal_path(self.uri)

    def read_window(self, window: PixelBox) -> np.ndarray:
        """bands×h×w array of the file's dtype; outside the scene filled with `fill_value`."""
        out = np.full((len(self.bands), *window.shape), self.fill_value, dtype=self.dtype)
        inner = window.clip(self.shape)
        if inner is None:
            return out
        try:
            with storage.gdal_env(self.uri), warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                part = self.datasets.get().read(self.bands, window=inner.to_rasterio())
        except RasterioIOError as exc:
            self.datasets.discard()
            raise read_failure(self.uri, inner, exc) from None
        r, c = inner.y0 - window.y0, inner.x0 - window.x0
        out[:, r : r + inner.height, c : c + inner.width] = part
        return out

    @property
    def data(self):
        """Lazy xarray DataArray band×y×x (dask chunks = whole multiples of the file's blocks).

        Each chunk is a `read_window` call, which sets up the GDAL environment itself, so the array
        computes on any thread or Dask worker, for local paths and `s3://` alike (a plain
        `rioxarray.open_rasterio` array re-opens files outside that environment and fails on S3).
        """
        if self._data is None:
            bh, bw = self.block_shape
            chunk = (bh * max(1, _TARGET_CHUNK // bh), bw * max(1, _TARGET_CHUNK // bw))
            self._data = lazy_dataarray(self, chunk)
            self._data.attrs["role"] = self.role
            if self.nodata is not None:
                self._data = self._data.rio.write_nodata(self.nodata)
        return self._data


def read_failure(uri: str, window: PixelBox, exc: Exception) -> Exception:
    """What a failed pixel read raises: a local file that opened but cannot be read is corrupt or
    truncated (InputError, not worth a retry); a remote read may be a network fault, so the
    original error is kept for the retry logic."""
    if storage.is_remote(uri):
        return exc
    return InputError(
        uri,
        f"cannot read rows {window.y0}:{window.y1}, columns {window.x0}:{window.x1}: "
        f"corrupt or truncated raster ({storage.redact(str(exc))})",
    )


class _WindowArray:
    """Array-like over `read_window` so dask can cut it into chunks (picklable: holds a scene)."""

    def __init__(self, scene: Any):
        self.scene = scene
        self.shape = (len(scene.bands), *scene.shape)
        self.dtype = np.dtype(scene.dtype)
        self.ndim = 3

    def __getitem__(self, key: tuple[slice, slice, slice]) -> np.ndarray:
        b, ys, xs = key
        win = PixelBox(ys.start or 0, ys.stop, xs.start or 0, xs.stop)
        return self.scene.read_window(win)[b]


def lazy_dataarray(scene: Any, chunk: tuple[int, int]):
    """A lazy xarray DataArray band×y×x whose chunks are `scene.read_window` calls."""
    # deferred: dask.array + xarray + rioxarray add ~4 s to every importer of the engine; only Scene.data needs them
    import dask.array as da
    import rioxarray  # noqa: F401  (registers .rio)
    import xarray as xr

    arr = da.from_array(
        _WindowArray(scene), chunks=(-1, chunk[0], chunk[1]), asarray=False, fancy=False
    )
    h, w = scene.shape
    t = scene.transform
    coords = {
        "band": list(scene.bands),
        "y": t.f + (np.arange(h) + 0.5) * t.e,
        "x": t.c + (np.arange(w) + 0.5) * t.a,
    }
    out = xr.DataArray(arr, dims=("band", "y", "x"), coords=coords, attrs={"source": scene.uri})
    if scene.crs is not None:
        out = out.rio.write_crs(scene.crs).rio.write_transform(t)
    return out


def _source_problem(uri: str) -> str | None:
    """Why `uri` cannot be opened before GDAL tries, or None."""
    if storage.is_remote(uri):
        try:
            return None if storage.exists(uri) else "file not found"
        except (PermissionError, OSError) as exc:  # refused credentials, unreachable endpoint
            detail = storage.redact(str(exc)) or type(exc).__name__
            return f"cannot access ({detail}); check AWS_* credentials and AWS_ENDPOINT_URL"
    if not os.path.exists(uri):
        return "file not found"
    if os.path.isdir(uri):
        return "is a directory, not a raster file"
    if os.path.getsize(uri) == 0:
        return "empty file (0 bytes)"
    return None


def _select_bands(uri: str, role: Role, count: int, cfg: DetectConfig) -> list[int]:
    wanted = cfg.optical.bands if role == "optical" else cfg.sar.bands
    if wanted is None:
        if role == "optical":
            if count >= 3:
                return [1, 2, 3]
            if count == 1:
                return [1]
            raise InputError(uri, "optical has 2 bands: say which to use with optical.bands")
        if count > 2:
            raise InputError(
                uri, f"SAR has {count} bands; set sar.bands to 1 or 2 of them (e.g. [1] for VV)"
            )
        return list(range(1, count + 1))
    bad = [b for b in wanted if not 1 <= b <= count]
    if bad:
        raise InputError(uri, f"{role} bands {bad} do not exist: the file has {count} band(s)")
    return list(wanted)


def _sample_windows(shape: tuple[int, int], size: int = 128) -> list[PixelBox]:
    """Five small windows (centre and quadrant centres): a cheap, scene-size-independent sample."""
    h, w = shape
    out = []
    for fy, fx in ((0.5, 0.5), (0.25, 0.25), (0.25, 0.75), (0.75, 0.25), (0.75, 0.75)):
        r0, c0 = max(0, int(h * fy) - size // 2), max(0, int(w * fx) - size // 2)
        out.append(PixelBox(r0, min(h, r0 + size), c0, min(w, c0 + size)))
    return out


def _resolve_units(scene: Scene, cfg: DetectConfig) -> SarUnits:
    if cfg.sar.units != "auto":
        return cfg.sar.units
    samples = []
    for win in _sample_windows(scene.shape):
        raw = scene.read_window(win).astype(np.float64)
        if scene.nodata is not None and not np.isnan(scene.nodata):
            raw[raw == scene.nodata] = np.nan
        samples.append(raw.ravel())
    return infer_sar_units(np.concatenate(samples), scene.dtype)


def open_scene(uri: str | os.PathLike[str], role: Role, cfg: DetectConfig) -> Scene:
    """Open the header of a scene and check it against the config (no pixels are read, except
    five 128² windows of SAR when its units are `auto`).

    Raises InputError naming the file for: missing, empty, corrupt, too large, wrong band count.
    """
    uri = os.fspath(uri)
    if role not in ("optical", "sar"):
        raise ValueError(f"role must be 'optical' or 'sar', got {role!r}")
    problem = _source_problem(uri)
    if problem:
        raise InputError(uri, problem)
    try:
        with storage.gdal_env(uri), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", NotGeoreferencedWarning)
            src = rasterio.open(storage.gdal_path(uri))
        with src:
            header = {
                "crs": src.crs,
                "transform": src.transform,
                "shape": (src.height, src.width),
                "count": src.count,
                "dtype": src.dtypes[0] if src.count else "uint8",
                "nodata": src.nodata,
                "block_shape": tuple(src.block_shapes[0]) if src.count else (1, 1),
            }
    except RasterioIOError as exc:
        raise InputError(uri, f"not a readable raster ({storage.redact(str(exc))})") from None
    h, w = header["shape"]
    if h == 0 or w == 0 or header["count"] == 0:
        raise InputError(uri, f"zero-size raster ({h}×{w}, {header['count']} bands)")
    if h * w > cfg.max_pixels:
        raise InputError(
            uri, f"{h}×{w} = {h * w} pixels exceeds max_pixels = {cfg.max_pixels} (see config)"
        )
    crs = header["crs"]
    if crs is None or any(issubclass(w_.category, NotGeoreferencedWarning) for w_ in caught):
        crs = None
        warnings.warn(
            f"{uri}: no CRS/georeferencing; using pixel coordinates, products will carry no CRS",
            stacklevel=2,
        )
    section = cfg.optical if role == "optical" else cfg.sar
    nodata = section.nodata if section.nodata is not None else header["nodata"]
    scene = Scene(
        uri=uri,
        role=role,
        crs=crs,
        transform=header["transform"],
        shape=(h, w),
        count=header["count"],
        dtype=np.dtype(header["dtype"]).name,
        nodata=None if nodata is None else float(nodata),
        bands=_select_bands(uri, role, header["count"], cfg),
        block_shape=header["block_shape"],
    )
    _check_fill(scene)
    if role == "sar":
        scene.units = _resolve_units(scene, cfg)
    return scene


def with_bands(scene: Scene, cfg: DetectConfig) -> Scene:
    """The opened scene reading the bands ``cfg`` selects, without opening the file again.

    A model whose channels differ from the defaults changes the bands after the header was read;
    reopening both files for that cost a second header read each and, for SAR in ``auto`` units,
    five more sampled windows from a fresh dataset. SAR units are sampled again (through the dataset
    already open in this thread) only when the bands changed, since they are measured on them.
    """
    bands = _select_bands(scene.uri, scene.role, scene.count, cfg)
    if bands == scene.bands:
        return scene
    out = dataclasses.replace(scene, bands=bands, units=None, _data=None)
    out.datasets = scene.datasets  # same file: this thread's open dataset serves the new bands
    if out.role == "sar":
        out.units = _resolve_units(out, cfg)
    return out


def _check_fill(scene: Scene) -> None:
    """A nodata value that the dtype cannot hold would silently wrap: refuse it."""
    if scene.nodata is None:
        return
    dt = np.dtype(scene.dtype)
    if np.isnan(scene.nodata):
        if dt.kind != "f":
            raise InputError(scene.uri, f"nodata NaN is not possible for {dt.name} data")
        return
    if dt.kind in "iu":
        info = np.iinfo(dt)
        if not (info.min <= scene.nodata <= info.max) or scene.nodata != int(scene.nodata):
            raise InputError(scene.uri, f"nodata {scene.nodata} does not fit {dt.name} data")


def stack_bands(uris: list[str], out: str | os.PathLike[str]) -> str:
    """Write a VRT that stacks single-band rasters on one grid as bands 1..n (e.g. S2 B02..B08).

    `out` may be local or `s3://`; sources are referenced by absolute path or /vsis3/ URI, so the
    VRT can be opened from anywhere those sources can. Returns `out` as a string.
    """

    if not uris:
        raise InputError(str(out), "stack_bands needs at least one source raster")
    headers = []
    for uri in uris:
        problem = _source_problem(uri)
        if problem:
            raise InputError(uri, problem)
        try:
            with (
                storage.gdal_env(uri),
                warnings.catch_warnings(),
                rasterio.open(storage.gdal_path(uri)) as src,
            ):
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                headers.append(
                    (
                        src.crs,
                        src.transform,
                        src.height,
                        src.width,
                        src.dtypes[0],
                        src.nodata,
                        src.block_shapes[0],
                    )
                )
        except RasterioIOError as exc:
            raise InputError(uri, f"not a readable raster ({storage.redact(str(exc))})") from None
    crs, transform, h, w, dtype, nodata, block = headers[0]
    for uri, (c, t, hh, ww, dt, _, _) in zip(uris[1:], headers[1:], strict=True):
        if (hh, ww) != (h, w) or c != crs or not t.almost_equals(transform):
            raise InputError(uri, f"not on the grid of {uris[0]}: cannot stack as a band")
        if dt != dtype:
            raise InputError(uri, f"dtype {dt} differs from {dtype} of {uris[0]}")
    gdal_type = {
        "uint8": "Byte",
        "int8": "Int8",
        "uint16": "UInt16",
        "int16": "Int16",
        "uint32": "UInt32",
        "int32": "Int32",
        "float32": "Float32",
        "float64": "Float64",
    }[dtype]
    lines = [f'<VRTDataset rasterXSize="{w}" rasterYSize="{h}">']
    if crs is not None:
        lines.append(f"  <SRS>{escape(crs.to_wkt())}</SRS>")
    gt = transform.to_gdal()
    lines.append("  <GeoTransform>" + ", ".join(repr(float(v)) for v in gt) + "</GeoTransform>")
    for i, uri in enumerate(uris, start=1):
        src_path = storage.gdal_path(uri) if storage.is_remote(uri) else os.path.abspath(uri)
        lines.append(f'  <VRTRasterBand dataType="{gdal_type}" band="{i}">')
        if nodata is not None:
            lines.append(f"    <NoDataValue>{nodata!r}</NoDataValue>")
        lines += [
            "    <SimpleSource>",
            f'      <SourceFilename relativeToVRT="0">{escape(src_path)}</SourceFilename>',
            "      <SourceBand>1</SourceBand>",
            f'      <SourceProperties RasterXSize="{w}" RasterYSize="{h}" DataType="{gdal_type}"'
            f' BlockXSize="{block[1]}" BlockYSize="{block[0]}" />',
            f'      <SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}" />',
            f'      <DstRect xOff="0" yOff="0" xSize="{w}" ySize="{h}" />',
            "    </SimpleSource>",
            "  </VRTRasterBand>",
        ]
    lines.append("</VRTDataset>")
    storage.write_bytes_atomic(out, ("\n".join(lines) + "\n").encode())
    return os.fspath(out)
