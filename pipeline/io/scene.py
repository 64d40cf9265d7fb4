"""Open an optical or SAR scene lazily (local or `s3://`) and read windows of it, boundless.

A `Scene` holds only the header (grid, bands, dtype, nodata, SAR units); pixels are read per
window, so memory is bounded by the window, never by the scene. Plain PNG/TIFF without a CRS are
accepted with a warning: their transform is rasterio's identity (pixel = 1 unit, row/col axes) and
products then carry no CRS.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import numpy as np
import rasterio
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

from pipeline.config import DetectConfig
from pipeline.errors import InputError, NoCRSWarning
from pipeline.geometry import PixelBox
from pipeline.io import storage
from pipeline.io.decode import CLIPPED_MAX, Decoding, clipped_fraction, float_optical_divisor
from pipeline.io.normalize import (
    SarUnits,
    band_valid,
    infer_sar_units,
    normalize_optical,
    normalize_sar,
)
from pipeline.io.sources import (
    ResolvedInput,
    acquired_from_tags,
    band_label,
    check_supported,
    resolve_input,
    split_list,
)
from pipeline.io.vrt import BandSource, stack_xml

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

    def adopt(self, ds: Any) -> None:
        """Serve this thread's reads from ``ds``, already open (the header's dataset): the
        planning thread then opens each file once, for its header and its sampled windows alike."""
        self._local.ds = ds

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
    count: int  # data bands in the file (an alpha band is the mask, not counted)
    dtype: str  # of the decoded values `read_window` returns (float32 for complex/scaled input)
    nodata: float | None  # in decoded units (NaN once decoded to float)
    bands: list[int]  # 1-based indexes actually used
    block_shape: tuple[int, int]
    units: SarUnits | None = None  # SAR only: resolved units (never "auto")
    gdal_source: str = field(
        default="", repr=False
    )  # what GDAL opens (pipeline.io.sources); "" = uri
    band_names: tuple[str | None, ...] = ()  # one per file band: list/STAC names, descriptions
    acquired: datetime | None = None  # acquisition time the input records (STAC Item, tags)
    decoding: Decoding = field(default_factory=Decoding)  # stored values → decoded (rules)
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
    def raw_fill(self) -> float:
        """The fill in stored units (what a warp of the file itself treats as nodata)."""
        raw = self.decoding.raw_nodata
        return 0 if raw is None else raw

    def decode(self, part: Any, read_masks: Any = None) -> np.ndarray:
        """Stored values of the selected bands → decoded values (`pipeline.io.decode`)."""
        masks = read_masks() if self.decoding.mask is not None and read_masks else None
        return self.decoding.decode(part, masks, self.fill_value)

    @property
    def path(self) -> str:
        """The path GDAL opens (/vsis3/ for s3:// URIs, a VRT for band lists and STAC Items)."""
        return self.gdal_source or storage.gdal_path(self.uri)

    def read_window(self, window: PixelBox) -> np.ndarray:
        """bands×h×w array of the file's dtype; outside the scene filled with `fill_value`."""
        out = np.full((len(self.bands), *window.shape), self.fill_value, dtype=self.dtype)
        inner = window.clip(self.shape)
        if inner is None:
            return out
        try:
            with storage.gdal_env(self.path), warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                ds = self.datasets.get()
                rio_win = inner.to_rasterio()
                part = self.decode(
                    ds.read(self.bands, window=rio_win),
                    lambda: ds.read_masks(self.bands, window=rio_win),
                )
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
    """Why `uri` cannot be opened before GDAL tries, or None (https, gs, az: GDAL tries)."""
    if uri.startswith("/vsi") or (not storage.is_remote(uri) and "://" in uri):
        return None
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


def open_scene(
    uri: str | os.PathLike[str], role: Role, cfg: DetectConfig, check: bool = True
) -> Scene:
    """Open the header of a scene and check it against the config; five 128² windows are sampled
    to decide what the header cannot (SAR units, float optical DN) and to refuse a decoding that
    would make the input constant (`pipeline.io.decode`).

    Raises InputError naming the file for: missing, empty, corrupt, too large, wrong band count.
    """
    uri = os.fspath(uri)
    if role not in ("optical", "sar"):
        raise ValueError(f"role must be 'optical' or 'sar', got {role!r}")
    for part in split_list(uri):
        check_supported(part)
        problem = _source_problem(part)
        if problem:
            raise InputError(part, problem)
    resolved = resolve_input(uri, role)
    try:
        with storage.gdal_env(resolved.gdal_path), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", NotGeoreferencedWarning)
            storage.bound_gdal_cache()  # the dataset stays open for the sample reads
            src = rasterio.open(resolved.gdal_path)
    except RasterioIOError as exc:
        raise InputError(uri, f"not a readable raster ({storage.redact(str(exc))})") from None
    with contextlib.ExitStack() as close_on_error:  # a refused file does not stay open
        close_on_error.callback(src.close)
        georeferenced = not any(issubclass(w.category, NotGeoreferencedWarning) for w in caught)
        scene = _scene_from_header(uri, role, resolved, _read_header(uri, src), georeferenced, cfg)
        scene.datasets.adopt(src)  # the planning thread opens each file once: header and sample
        _decide_from_sample(scene, cfg, check)
        close_on_error.pop_all()
    return scene


def _read_header(uri: str, src: Any) -> dict[str, Any]:
    """What `open_scene` needs of an open dataset's header, as plain values."""
    try:
        return {
            "descriptions": tuple(src.descriptions),
            "tags": dict(src.tags()),
            "crs": src.crs,
            "transform": src.transform,
            "shape": (src.height, src.width),
            "count": src.count,
            "dtype": src.dtypes[0] if src.count else "uint8",
            "nodata": src.nodata,
            "block_shape": tuple(src.block_shapes[0]) if src.count else (1, 1),
            "scales": tuple(src.scales),
            "offsets": tuple(src.offsets),
            "mask_flags": [tuple(f.name for f in flags) for flags in src.mask_flag_enums],
            "alpha": [ci.name == "alpha" for ci in src.colorinterp],
        }
    except RasterioIOError as exc:
        raise InputError(uri, f"not a readable raster ({storage.redact(str(exc))})") from None


def _scene_from_header(
    uri: str,
    role: Role,
    resolved: ResolvedInput,
    header: dict[str, Any],
    georeferenced: bool,
    cfg: DetectConfig,
) -> Scene:
    """The scene a checked header describes (size, CRS, nodata, bands, decoding rules)."""
    h, w = header["shape"]
    names = resolved.band_names or header["descriptions"]
    if h == 0 or w == 0 or header["count"] == 0:
        raise InputError(uri, f"zero-size raster ({h}×{w}, {header['count']} bands)")
    if h * w > cfg.max_pixels:
        raise InputError(
            uri, f"{h}×{w} = {h * w} pixels exceeds max_pixels = {cfg.max_pixels} (see config)"
        )
    crs = header["crs"] if georeferenced else None
    if crs is None:
        warnings.warn(
            f"{uri}: no CRS/georeferencing; using pixel coordinates, products will carry no CRS",
            NoCRSWarning,
            stacklevel=3,  # the caller of open_scene
        )
    section = cfg.optical if role == "optical" else cfg.sar
    nodata = section.nodata if section.nodata is not None else header["nodata"]
    nodata = None if nodata is None else float(nodata)
    count = _data_band_count(uri, header["alpha"])
    bands = _select_bands(uri, role, count, cfg)
    file_dtype = _dtype_name(header["dtype"])
    decoding = _header_decoding(uri, role, header, bands, file_dtype, nodata, cfg)
    scene = Scene(
        uri=uri,
        role=role,
        crs=crs,
        transform=header["transform"],
        shape=(h, w),
        count=count,
        dtype=decoding.decoded_dtype(file_dtype),
        nodata=decoding.decoded_nodata(nodata),
        bands=bands,
        block_shape=header["block_shape"],
        gdal_source=resolved.gdal_path,
        band_names=tuple(names),
        acquired=resolved.acquired or acquired_from_tags(header["tags"]),
        decoding=decoding,
    )
    _check_fill(scene, file_dtype, nodata)
    return scene


def with_bands(scene: Scene, cfg: DetectConfig) -> Scene:
    """The opened scene reading the bands ``cfg`` selects, without opening the file again.

    A model whose channels differ from the defaults changes the bands after the header was read;
    reopening both files for that cost a second header read each and, for SAR in ``auto`` units,
    five more sampled windows from a fresh dataset. SAR units are sampled again (through the dataset
    already open in this thread) only when the bands changed, since they are measured on them. A
    file whose decoding depends on its bands (scale/offset tags, mask bands, complex values) is
    opened again, so those rules are decided for the new bands.
    """
    bands = _select_bands(scene.uri, scene.role, scene.count, cfg)
    if bands == scene.bands:
        return scene
    dec = scene.decoding
    if dec.scales is not None or dec.mask is not None or dec.complex_mode is not None:
        return open_scene(scene.uri, scene.role, cfg)
    out = dataclasses.replace(scene, bands=bands, units=None, _data=None)
    out.datasets = scene.datasets  # same file: this thread's open dataset serves the new bands
    if out.role == "sar":
        _decide_from_sample(out, cfg)
    return out


def _dtype_name(dtype: str) -> str:
    """numpy's name of a GDAL data type (complex_int16 is read as complex64)."""
    return "complex64" if dtype == "complex_int16" else np.dtype(dtype).name


def _data_band_count(uri: str, alpha: list[bool]) -> int:
    """Bands that hold data: a last alpha band is the mask (RGBA, gray + alpha), not a band."""
    if len(alpha) > 1 and alpha[-1]:
        return len(alpha) - 1
    return len(alpha)


def _header_decoding(
    uri: str,
    role: Role,
    header: dict[str, Any],
    bands: list[int],
    file_dtype: str,
    nodata: float | None,
    cfg: DetectConfig,
) -> Decoding:
    """The decoding rules the header alone decides (complex, scale/offset tags, mask/alpha)."""
    dec = Decoding(raw_nodata=nodata)
    if np.dtype(file_dtype).kind == "c":
        if role == "optical":
            raise InputError(uri, f"optical is complex ({file_dtype}): give a real-valued image")
        if cfg.sar.units == "db":
            raise InputError(
                uri,
                f"SAR is complex ({file_dtype}, an SLC) but sar.units is db: complex values are "
                "not dB; set sar.units to auto (intensity |z|²) or amplitude (|z|)",
            )
        mode = "amplitude" if cfg.sar.units == "amplitude" else "intensity"
        dec.complex_mode = mode
        dec.rules.append(
            f"complex SAR ({file_dtype}): {'|z|² intensity (linear power)' if mode == 'intensity' else '|z| amplitude'}"
        )
    scales = tuple(float(header["scales"][b - 1]) for b in bands)
    offsets = tuple(float(header["offsets"][b - 1]) for b in bands)
    if any(sc != 1.0 for sc in scales) or any(off != 0.0 for off in offsets):
        if dec.complex_mode is not None:
            raise InputError(uri, "complex SAR with scale/offset tags: not supported")
        dec.scales, dec.offsets = scales, offsets
        pairs = ", ".join(f"×{sc:g} {off:+g}" for sc, off in zip(scales, offsets, strict=True))
        dec.rules.append(f"GDAL scale/offset tags applied: value = DN {pairs}")
    flags = [header["mask_flags"][b - 1] for b in bands]
    if any(("per_dataset" in f or "alpha" in f) and "all_valid" not in f for f in flags):
        dec.mask = "alpha band" if any("alpha" in f for f in flags) else "mask band"
        dec.rules.append(f"GDAL {dec.mask} honoured: masked pixels are nodata")
    return dec


def _sample(scene: Scene) -> np.ndarray:
    """bands×N decoded values of the valid pixels of five 128² windows (see `_sample_windows`)."""
    parts = []
    for win in _sample_windows(scene.shape):
        raw = scene.read_window(win)
        ok = band_valid(raw, scene.nodata)
        if scene.role == "sar":
            ok &= (raw != 0).any(axis=0)
        parts.append(raw[:, ok])
    return np.concatenate(parts, axis=1)


def _decide_from_sample(scene: Scene, cfg: DetectConfig, check: bool = True) -> None:
    """The rules a sample decides, once per scene (never per window: products must not depend on
    the tiling): SAR units, float optical DN vs reflectance; then refuse a decoding that would feed
    a constant (> 95 % of the valid samples at a clip bound) to the model.

    `check=False` (a worker reopening a planned pair: the plan decided and checked everything and
    its config says so explicitly) reads no sample unless a rule is still `auto`."""
    undecided = (scene.role == "sar" and cfg.sar.units == "auto") or (
        scene.role == "optical"
        and cfg.optical.scale == "auto"
        and np.dtype(scene.dtype).kind == "f"
    )
    if not check and not undecided:
        if scene.role == "sar":
            scene.units = cfg.sar.units  # type: ignore[assignment]  # not auto: checked above
        return
    sample = _sample(scene)
    if scene.role == "optical":
        if cfg.optical.scale == "auto" and np.dtype(scene.dtype).kind == "f":
            divisor, rule = float_optical_divisor(sample.astype(np.float64), scene.uri)
            if divisor is not None:
                scene.decoding.divide = divisor
                scene.dtype = "float32"
                scene.nodata = scene.decoding.decoded_nodata(scene.nodata)
                sample = sample.astype(np.float32) / np.float32(divisor)
            scene.decoding.rules.append(rule)
        normalised = normalize_optical(sample[:, None, :], cfg.optical, scene.dtype)[:, 0]
        lo, hi, what = -2.0, 2.0, f"reflectance clip [0, {cfg.optical.max_reflectance}]"
        fix = "set optical.scale (DN per unit reflectance)"
    else:
        if cfg.sar.units != "auto":
            scene.units = cfg.sar.units
        elif scene.decoding.complex_mode is not None:
            scene.units = "linear" if scene.decoding.complex_mode == "intensity" else "amplitude"
        else:
            scene.units = infer_sar_units(sample, scene.dtype)
        normalised = normalize_sar(sample[:, None, :], cfg.sar, scene.units, scene.dtype)[:, 0]
        lo, hi = -1.0, 1.0
        what = f"dB range {list(cfg.sar.db_range)} as {scene.units}"
        fix = (
            "set sar.units (linear, amplitude or db), sar.dn_to_db [gain, offset] for dB stored "
            "as integers, or sar.amplitude_scale"
        )
    clipped = clipped_fraction(normalised, lo, hi)
    if clipped > CLIPPED_MAX:
        raise InputError(
            scene.uri,
            f"{100 * clipped:.1f} % of the sampled valid pixels fall outside the {what}: the model "
            f"would see a constant input; {fix}",
        )


def _check_fill(scene: Scene, file_dtype: str, nodata: float | None) -> None:
    """A nodata value that the stored dtype cannot hold would silently wrap: refuse it."""
    if nodata is None:
        return
    dt = np.dtype(file_dtype)
    if np.isnan(nodata):
        if dt.kind not in "fc":
            raise InputError(scene.uri, f"nodata NaN is not possible for {dt.name} data")
        return
    if dt.kind in "iu":
        info = np.iinfo(dt)
        if not (info.min <= nodata <= info.max) or nodata != int(nodata):
            raise InputError(scene.uri, f"nodata {nodata} does not fit {dt.name} data")


def stack_bands(uris: list[str], out: str | os.PathLike[str]) -> str:
    """Write a VRT file that stacks single-band rasters on one grid as bands 1..n (e.g. S2 B02..B08),
    each band named after its file. A band list given as `B02.tif,B03.tif,...` needs no file
    (`pipeline.io.sources` stacks it in memory); this writes one to keep or share.

    `out` may be local or `s3://`; sources are referenced by absolute path or /vsi… path, so the
    VRT can be opened from anywhere those sources can. Returns `out` as a string.
    """

    if not uris:
        raise InputError(str(out), "stack_bands needs at least one source raster")
    for uri in uris:
        problem = _source_problem(uri)
        if problem:
            raise InputError(uri, problem)
    xml, _ = stack_xml([BandSource(u, 1, band_label(u)) for u in uris])
    storage.write_bytes_atomic(out, xml.encode())
    return os.fspath(out)
