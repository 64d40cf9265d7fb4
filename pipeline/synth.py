"""Synthetic georeferenced optical/SAR pairs with a flood change label (demo, tests, benchmarks).

Every pixel is a pure function of its global (row, col) and the seed: smooth value-noise fields
drawn from a hashed lattice, so any window can be generated alone. Scenes are written window by
window (512-row strips, at most 2048 columns), so a 16384² pair never needs the scene in RAM.

Pre-event optical (uint16, B,G,R,NIR reflectance ×10000): water in the lowest ground, urban
patches, and rectangular agricultural parcels of vegetation or bare soil, with texture.
Post-event SAR (float32 σ⁰ linear power, VV[+VH], Gamma speckle of `looks` looks): the same land
cover, with the ground just above the pre-event water flooded (dark). The label is that flooded
land: 1 = dry in the optical, water in the SAR, so the change is learnable from the pair.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from pydantic import BaseModel, ConfigDict, Field
from rasterio.crs import CRS
from rasterio.windows import Window

from pipeline.errors import ConfigError, OutputExistsError

FILES = ("optical.tif", "sar.tif", "label.tif")
WATER, VEGETATION, SOIL, URBAN = 0, 1, 2, 3
# B, G, R, NIR top-of-canopy reflectance per class.
_REFLECTANCE = np.array(
    [
        [0.060, 0.055, 0.035, 0.020],  # water
        [0.035, 0.075, 0.040, 0.340],  # vegetation
        [0.095, 0.125, 0.165, 0.240],  # bare soil
        [0.135, 0.145, 0.155, 0.190],  # urban
    ],
    dtype=np.float32,
)
# σ⁰ linear power, VV and VH per class (water ≈ -24/-31 dB, urban ≈ -4/-13 dB).
_SIGMA0 = np.array(
    [[0.004, 0.0008], [0.060, 0.015], [0.030, 0.005], [0.400, 0.050]], dtype=np.float32
)
_M32 = np.uint64(0xFFFFFFFF)


class SynthSpec(BaseModel):
    """What to generate; the same spec and seed always give the same bytes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    size: tuple[int, int] = Field(description="(H, W) in pixels")
    seed: int = 0
    crs: str = "EPSG:32633"
    change_fraction: float = Field(default=0.05, ge=0.0, le=0.5)
    sar_bands: int = Field(default=2, ge=1, le=2)
    looks: float = Field(default=4.0, gt=0)
    nodata_strip: float = Field(
        default=0.0,
        ge=0.0,
        lt=0.5,
        description="Fraction of the width: optical nodata (0) on the east edge, SAR zero fill west.",
    )
    pixel_size: float | None = Field(default=None, gt=0, description="None: 10 m or 9e-5°.")


@dataclass(frozen=True)
class SynthResult:
    """Paths of a written synthetic pair and label, with the change fraction drawn (tests and
    benches assert on it)."""

    optical: Path
    sar: Path
    label: Path
    change_fraction: float  # of all pixels
    seconds: float


def _hash01(iy: np.ndarray, ix: np.ndarray, seed: int, key: int) -> np.ndarray:
    """Uniform [0, 1) float32 per lattice node (iy column vector × ix row vector), 32-bit mix."""
    h = (
        iy.astype(np.uint64) * np.uint64(0x9E3779B1)
        + ix.astype(np.uint64) * np.uint64(0x85EBCA77)
        + np.uint64((seed * 0xC2B2AE3D + key * 0x27D4EB2F) & 0xFFFFFFFF)
    ) & _M32
    for shift, mult in ((15, 0x2C1B3C6D), (12, 0x297A2D39), (15, 0x165667B1)):
        h ^= h >> np.uint64(shift)
        h = (h * np.uint64(mult)) & _M32
    h ^= h >> np.uint64(16)
    return ((h >> np.uint64(8)).astype(np.float32)) / np.float32(1 << 24)


def _axis(coords: np.ndarray, cell: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    idx = coords // cell
    frac = ((coords % cell).astype(np.float32) + np.float32(0.5)) / np.float32(cell)
    frac = frac * frac * (np.float32(3) - np.float32(2) * frac)  # smoothstep: no lattice creases
    lo = int(idx.min())
    return idx - lo, frac, lo, int(idx.max()) + 1


def value_noise(rows: np.ndarray, cols: np.ndarray, cell: int, seed: int, key: int) -> np.ndarray:
    """Smooth noise in [0, 1] on the pixel grid rows × cols (any sorted int64 coordinates)."""
    iy, fy, y0, y1 = _axis(rows, cell)
    ix, fx, x0, x1 = _axis(cols, cell)
    lat = _hash01(np.arange(y0, y1 + 1)[:, None], np.arange(x0, x1 + 1)[None, :], seed, key)
    a = lat[:, ix] * (np.float32(1) - fx) + lat[:, ix + 1] * fx  # small: lattice rows × W
    d = np.diff(a, axis=0)
    out = a[iy]  # lerp along rows with in-place ops: the per-pixel cost of the generator
    step = d[iy]
    step *= fy[:, None]
    out += step
    return out


def fbm(rows: np.ndarray, cols: np.ndarray, cell: int, octaves: int, seed: int, key: int):
    """Fractal sum of value noise (octaves halve the cell and the amplitude), in [0, 1]."""
    total = np.zeros((rows.size, cols.size), dtype=np.float32)
    norm = 0.0
    for k in range(octaves):
        amp = 0.5**k
        noise = value_noise(rows, cols, max(2, cell >> k), seed, key * 16 + k)
        noise *= np.float32(amp)
        total += noise
        norm += amp
    return total / np.float32(norm)


def _parcels(rows: np.ndarray, cols: np.ndarray, cell: int, seed: int) -> np.ndarray:
    """Per-pixel uniform value constant over rectangular parcels (nearest lattice node)."""
    iy, ix = rows // cell, cols // cell
    return _hash01(iy[:, None], ix[None, :], seed, 99)


@dataclass(frozen=True)
class _Fields:
    elevation: np.ndarray
    urban: np.ndarray


def _fields(rows: np.ndarray, cols: np.ndarray, scale: int, seed: int) -> _Fields:
    return _Fields(
        elevation=fbm(rows, cols, scale, 4, seed, 1),
        urban=fbm(rows, cols, max(8, scale // 4), 2, seed, 2),
    )


@dataclass(frozen=True)
class _Thresholds:
    water: float
    flood: float
    urban: float


def _thresholds(spec: SynthSpec, scale: int) -> _Thresholds:
    """Quantiles of the fields on a sparse preview grid: ~8 % water, ~8 % urban, the requested
    fraction of flooded land (the fields are smooth, so 256² samples estimate them well)."""
    h, w = spec.size
    rows = np.unique(np.linspace(0, h - 1, min(h, 256)).astype(np.int64))
    cols = np.unique(np.linspace(0, w - 1, min(w, 256)).astype(np.int64))
    f = _fields(rows, cols, scale, spec.seed)
    water = float(np.quantile(f.elevation, 0.08))
    urban = float(np.quantile(f.urban, 0.92))
    land = np.sort(f.elevation[(f.elevation >= water) & (f.urban < urban)])
    n = int(round(spec.change_fraction * f.elevation.size))
    flood = water if n <= 0 or land.size == 0 else float(land[min(n, land.size - 1)])
    return _Thresholds(water, flood, urban)


def _landcover(rows, cols, f: _Fields, t: _Thresholds, scale: int, seed: int):
    parcel = _parcels(rows, cols, max(16, scale // 8), seed)
    cls = np.where(parcel < 0.6, VEGETATION, SOIL).astype(np.uint8)
    cls[f.urban >= t.urban] = URBAN
    cls[f.elevation < t.water] = WATER
    flooded = (f.elevation >= t.water) & (f.elevation < t.flood) & (cls != URBAN)
    return cls, flooded, parcel


def _strip_masks(spec: SynthSpec, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column masks of the optical nodata strip (east) and the SAR zero-fill strip (west)."""
    w = spec.size[1]
    n = int(round(spec.nodata_strip * w))
    return cols >= w - n, cols < n


def _render(spec: SynthSpec, r0: int, r1: int, c0: int, c1: int, t: _Thresholds, scale: int):
    rows = np.arange(r0, r1, dtype=np.int64)
    cols = np.arange(c0, c1, dtype=np.int64)
    seed = spec.seed
    f = _fields(rows, cols, scale, seed)
    cls, flooded, parcel = _landcover(rows, cols, f, t, scale, seed)
    texture = fbm(rows, cols, 8, 2, seed, 3)
    # Optical: class reflectance × parcel brightness × fine texture, as DN (×10000).
    bt = np.float32(0.85) + np.float32(0.3) * parcel
    tex = np.float32(0.8) + np.float32(0.4) * texture
    bt *= tex
    bt *= np.float32(10000)
    optical = np.empty((4, *cls.shape), dtype=np.uint16)
    for band in range(4):  # per band with lookup tables: no H×W×4 temporaries
        refl = _REFLECTANCE[:, band][cls]
        refl *= bt
        np.clip(refl, 1, 65535, out=refl)
        optical[band] = refl
    # SAR: post-event cover (flooded land is water), texture, then Gamma speckle (mean 1).
    post = np.where(flooded, np.uint8(WATER), cls)
    rng = np.random.default_rng([seed, 7, r0, c0])
    shape = (spec.sar_bands, *cls.shape)
    sar = rng.standard_gamma(np.float32(spec.looks), size=shape, dtype=np.float32)
    tex *= np.float32(1.0 / spec.looks)  # Gamma(L, 1/L): mean 1, variance 1/L
    for band in range(spec.sar_bands):
        sar[band] *= _SIGMA0[:, band][post]
        sar[band] *= tex
    label = flooded.astype(np.uint8)
    opt_nodata, sar_fill = _strip_masks(spec, cols)
    optical[:, :, opt_nodata] = 0
    sar[:, :, sar_fill] = 0
    label[:, opt_nodata | sar_fill] = 0
    return optical, sar, label


def _grid(spec: SynthSpec):

    try:
        crs = CRS.from_user_input(spec.crs)
    except Exception as exc:  # noqa: BLE001  (rasterio raises CRSError or others)
        raise ConfigError(f"synth: crs {spec.crs!r} is not a valid CRS ({exc})") from None
    h, w = spec.size
    if crs.is_geographic:
        px = spec.pixel_size or 9e-5
        return crs, Affine(px, 0.0, 13.0, 0.0, -px, 42.9)
    px = spec.pixel_size or 10.0
    return crs, Affine(px, 0.0, 500000.0 - w * px / 2, 0.0, -px, 4_800_000.0)


def _profile(spec: SynthSpec, crs, transform, count: int, dtype: str, predictor: int) -> dict:
    block = 512 if min(spec.size) >= 512 else max(16, math.ceil(min(spec.size) / 16) * 16)
    return {
        "driver": "GTiff",
        "height": spec.size[0],
        "width": spec.size[1],
        "count": count,
        "dtype": dtype,
        "crs": crs,
        "transform": transform,
        "tiled": True,
        "blockxsize": block,
        "blockysize": block,
        "compress": "zstd",
        "zstd_level": 1,
        "predictor": predictor,
        "interleave": "pixel",
        "bigtiff": "IF_SAFER",
    }


def synth_pair(
    out_dir: str | os.PathLike[str],
    spec: SynthSpec | None = None,
    overwrite: bool = False,
    **fields: object,
) -> SynthResult:
    """Write optical.tif, sar.tif, label.tif (+ synth.json) into `out_dir`; see module docstring.

    Give a `SynthSpec`, or its fields as keywords: `synth_pair(d, size=(512, 512), seed=1)`.
    """
    if spec is None:
        spec = SynthSpec(**fields)
    elif fields:
        spec = spec.model_copy(update=fields)

    start = time.perf_counter()
    out = Path(out_dir)
    h, w = spec.size
    if h < 1 or w < 1:
        raise ConfigError(f"synth: size must be positive, got {spec.size}")
    existing = [out / name for name in FILES if (out / name).exists()]
    if existing and not overwrite:
        raise OutputExistsError(f"{existing[0]}: exists (pass --overwrite to replace it)")
    out.mkdir(parents=True, exist_ok=True)
    crs, transform = _grid(spec)
    scale = max(64, min(h, w) // 4)  # land-cover features scale with the scene, min 64 px
    t = _thresholds(spec, scale)
    profiles = {
        "optical.tif": _profile(spec, crs, transform, 4, "uint16", 2),
        "sar.tif": _profile(spec, crs, transform, spec.sar_bands, "float32", 1),
        "label.tif": _profile(spec, crs, transform, 1, "uint8", 1),
    }
    profiles["optical.tif"]["nodata"] = 0
    tmp = {name: out / f".{name}.partial" for name in FILES}
    changed = 0
    strip_w = profiles["optical.tif"]["blockxsize"] * 4
    with (
        rasterio.open(tmp["optical.tif"], "w", **profiles["optical.tif"]) as d_opt,
        rasterio.open(tmp["sar.tif"], "w", **profiles["sar.tif"]) as d_sar,
        rasterio.open(tmp["label.tif"], "w", **profiles["label.tif"]) as d_lab,
    ):
        d_opt.descriptions = ("B02 blue", "B03 green", "B04 red", "B08 nir")
        d_sar.descriptions = ("VV", "VH")[: spec.sar_bands]
        d_lab.descriptions = ("change (1 = flooded)",)
        for r0 in range(0, h, 512):
            r1 = min(h, r0 + 512)
            for c0 in range(0, w, strip_w):
                c1 = min(w, c0 + strip_w)
                optical, sar, label = _render(spec, r0, r1, c0, c1, t, scale)
                win = Window(c0, r0, c1 - c0, r1 - r0)
                d_opt.write(optical, window=win)
                d_sar.write(sar, window=win)
                d_lab.write(label[None], window=win)
                changed += int(label.sum())
    for name in FILES:
        os.replace(tmp[name], out / name)
    fraction = changed / (h * w)
    meta = {"spec": spec.model_dump(), "change_fraction": fraction, "units": "linear"}
    (out / "synth.json").write_text(json.dumps(meta, indent=2) + "\n")
    return SynthResult(
        out / "optical.tif",
        out / "sar.tif",
        out / "label.tif",
        fraction,
        time.perf_counter() - start,
    )
