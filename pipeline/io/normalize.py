"""Raw pixels → model input, and the valid mask (pure numpy; inference *and* training use this).

Optical: DN / scale = reflectance, clipped to [0, max_reflectance], then
    x = (r / max_reflectance - 0.5) / 0.25            (range [-2, 2], 0 at half the clip)
A fixed affine map (not per-scene statistics) keeps tiles, blocks and scenes comparable, so the
products do not depend on how the scene is cut and training sees the same numbers as inference.

SAR: σ⁰ in dB (linear power → 10·log10, amplitude → 20·log10 of amplitude / amplitude_scale),
clipped to db_range = (lo, hi), then
    x = 2 · (dB - lo) / (hi - lo) - 1                   (range [-1, 1])
dB is the natural scale for backscatter (speckle becomes additive, water vs land is a fixed offset).

Valid = optical valid AND SAR valid, where a pixel is invalid if any band is NaN/±inf, equals the
nodata value, or (no nodata value) all its bands are exactly 0 (zero fill: never a real reflectance
in every band, and the usual SAR border fill). Invalid pixels are 0 in the normalised arrays, so the
model never sees NaN.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from pipeline.config import OpticalConfig, SarConfig

SarUnits = Literal["linear", "amplitude", "db"]
_EPS_LINEAR = 1e-10  # floor before log10: 10·log10(1e-10) = -100 dB, far below any db_range


def optical_scale(cfg: OpticalConfig, dtype: np.dtype | str) -> float:
    """DN per unit reflectance: the config's number, or by dtype when `auto`.

    auto: 10000 for 16-bit integers (Sentinel-2/Landsat convention), 255 / max_reflectance for
    uint8 (8-bit images are display-stretched: full scale maps onto the reflectance clip instead
    of saturating half the range), 1 for floats (already reflectance).
    """
    if cfg.scale != "auto":
        return float(cfg.scale)
    dt = np.dtype(dtype)
    if dt == np.uint8:
        return 255.0 / cfg.max_reflectance
    if dt.kind in "iu":
        return 10000.0
    return 1.0


def amplitude_scale(cfg: SarConfig, dtype: np.dtype | str) -> float:
    """Amplitude per unit amplitude (σ⁰ = (A / scale)²): config value, or by dtype when `auto`.

    auto: the dtype's maximum for uint8/uint16 (full scale = 0 dB: the only defensible guess for
    uncalibrated DN images), 1 for floats. Calibrated data should be given in linear or dB.
    """
    if cfg.amplitude_scale != "auto":
        return float(cfg.amplitude_scale)
    dt = np.dtype(dtype)
    if dt.kind in "iu":
        return float(np.iinfo(dt).max)
    return 1.0


def infer_sar_units(sample: np.ndarray, dtype: np.dtype | str | None = None) -> SarUnits:
    """The `auto` rule for SAR units, decided once per scene from a sample of valid pixels.

    - integer data (uint8/uint16 DN, plain-image SAR) → `amplitude` (DN are amplitude-like);
    - float data with a median below 0 or any value below -1 → `db` (σ⁰ power and amplitude are
      never negative; dB backscatter is almost always negative, water near -20 dB);
    - other float data → `linear` power (the usual calibrated σ⁰ product).
    NaN/inf and exact zeros (fill) are ignored; an all-invalid sample gives `linear`.
    """
    dt = np.dtype(dtype if dtype is not None else sample.dtype)
    if dt.kind in "iub":
        return "amplitude"
    values = np.asarray(sample, dtype=np.float64).ravel()
    values = values[np.isfinite(values) & (values != 0)]
    if values.size == 0:
        return "linear"
    if np.median(values) < 0 or values.min() < -1:
        return "db"
    return "linear"


def normalize_optical(
    raw: np.ndarray,
    cfg: OpticalConfig,
    dtype: np.dtype | str | None = None,
    valid: np.ndarray | None = None,
) -> np.ndarray:
    """C×H×W optical DN → float32 model input (see module docstring); `dtype` picks the auto scale."""
    scale = optical_scale(cfg, dtype if dtype is not None else raw.dtype)
    # One float32 copy, then every step in place: the same operations in the same order (the
    # same bits) without a temporary per step (the normalise stage was the largest of the block
    # phase in `m2cd bench pipeline --null-model`: 19 % of the run, ~10 passes per strip).
    out = raw.astype(np.float32)
    np.divide(out, np.float32(scale), out=out)
    np.clip(out, 0.0, cfg.max_reflectance, out=out)
    np.divide(out, np.float32(cfg.max_reflectance), out=out)
    np.subtract(out, np.float32(0.5), out=out)
    np.divide(out, np.float32(0.25), out=out)
    return _zero_invalid(out, valid, raw)


def sar_to_db(
    raw: np.ndarray, units: SarUnits, cfg: SarConfig, dtype: np.dtype | str | None = None
) -> np.ndarray:
    """SAR values in the given units → σ⁰ in dB (float32; NaN/inf stay non-finite)."""
    x = raw.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        if units == "db":
            if cfg.dn_to_db is not None:  # dB stored as DN (8-bit renderings): undo the stretch
                gain, offset = cfg.dn_to_db
                return x * np.float32(gain) + np.float32(offset)
            return x
        if units == "linear":
            return np.float32(10.0) * np.log10(np.maximum(x, _EPS_LINEAR))
        if units == "amplitude":
            amp = x / np.float32(amplitude_scale(cfg, dtype if dtype is not None else raw.dtype))
            return np.float32(20.0) * np.log10(np.maximum(amp, np.sqrt(_EPS_LINEAR)))
    raise ValueError(f"unknown SAR units {units!r}: resolve 'auto' per scene with infer_sar_units")


def normalize_sar(
    raw: np.ndarray,
    cfg: SarConfig,
    units: SarUnits | None = None,
    dtype: np.dtype | str | None = None,
    valid: np.ndarray | None = None,
) -> np.ndarray:
    """C×H×W SAR → float32 in [-1, 1]: σ⁰ dB clipped to `cfg.db_range` (see module docstring).

    `units` must be resolved (the scene's `units`): deciding `auto` tile by tile would make the
    products depend on the tiling.
    """
    resolved = units or cfg.units
    if resolved == "auto":
        raise ValueError("normalize_sar needs resolved units: pass Scene.units (infer_sar_units)")
    db = sar_to_db(raw, resolved, cfg, dtype)
    lo, hi = (np.float32(v) for v in cfg.db_range)
    np.clip(db, lo, hi, out=db)  # NaN stays NaN; zeroed below
    # 2·(db − lo)/(hi − lo) − 1 in place, in that order (same bits as the expression)
    np.subtract(db, lo, out=db)
    np.multiply(db, np.float32(2.0), out=db)
    np.divide(db, hi - lo, out=db)
    np.subtract(db, np.float32(1.0), out=db)
    return _zero_invalid(db, valid, raw)


def band_valid(raw: np.ndarray, nodata: float | None) -> np.ndarray:
    """H×W: True where one scene's pixel is usable (see module docstring for the rule)."""
    if raw.ndim == 2:
        raw = raw[None]
    ok = np.ones(raw.shape[1:], dtype=bool)
    if raw.dtype.kind == "f":
        ok &= np.isfinite(raw).all(axis=0)
    if nodata is not None and not np.isnan(nodata):
        ok &= ~(raw == np.asarray(nodata).astype(raw.dtype)).any(axis=0)
    elif nodata is None:
        ok &= (raw != 0).any(axis=0)
    return ok


def valid_mask(
    optical_raw: np.ndarray,
    sar_raw: np.ndarray,
    optical_nodata: float | None = None,
    sar_nodata: float | None = None,
) -> np.ndarray:
    """H×W bool: optical valid AND SAR valid (nodata, zero fill, NaN/±inf; `sar_valid`)."""
    return band_valid(optical_raw, optical_nodata) & sar_valid(sar_raw, sar_nodata)


def sar_valid(raw: np.ndarray, nodata: float | None) -> np.ndarray:
    """H×W: True where a SAR pixel is usable: `band_valid`, and exact zeros are fill even when
    the file declares another nodata value (border noise removal writes 0)."""
    ok = band_valid(raw, nodata)
    if nodata is not None:
        ok &= (raw.reshape(-1, *raw.shape[-2:]) != 0).any(axis=0)
    return ok


def match_channels(x: np.ndarray, channels: int) -> np.ndarray:
    """Map C×H×W model input onto the `channels` a model expects.

    - 1 → n: the band is replicated (a 1-band optical, or VV alone, for a 3-channel encoder);
      replication keeps the per-channel statistics a pretrained encoder expects.
    - 2 → 3: (b1, b2, mean(b1, b2)), e.g. (VV, VH, mean) in normalised dB: every channel stays a
      backscatter-like image in [-1, 1], as the replicated single-band SAR the model was trained on.
    Anything else (more bands than channels) must be chosen in the config: ValueError.
    """
    c = x.shape[0]
    if c == channels:
        return x
    if c == 1:
        return np.repeat(x, channels, axis=0)
    if c == 2 and channels == 3:
        return np.concatenate([x, x.mean(axis=0, keepdims=True, dtype=np.float32)], axis=0)
    raise ValueError(
        f"cannot map {c} channels onto a model that expects {channels}: choose bands in the config"
    )


def _zero_invalid(out: np.ndarray, valid: np.ndarray | None, raw: np.ndarray) -> np.ndarray:
    """0 wherever the input was NaN/±inf (clipping would turn inf into a plausible value) or the
    valid mask says so."""
    if raw.dtype.kind == "f":  # integer input gives finite values: nothing to clean
        np.nan_to_num(out, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        out[~np.isfinite(raw)] = 0.0
    if valid is not None and not valid.all():
        out[:, ~valid] = 0.0
    return out.astype(np.float32, copy=False)
