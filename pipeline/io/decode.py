"""How a file's stored values become the values the normaliser takes: the rules for encodings that lie.

A raster's dtype does not say what its numbers mean. Four encodings read silently wrong before
(issue 15 point 4); each is now detected from the header (or a sample) and decoded by a stated rule,
and the rule is kept in ``Decoding.rules`` (printed in the plan, recorded in ``run.json``):

- **complex SAR** (SLC): intensity ``|z|²`` (linear power; ``|z|`` with ``sar.units: amplitude``).
  Taking the real part gave noise around 0 read as dB. dB cannot be complex: refused.
- **GDAL scale/offset tags** (``value = DN × scale + offset``, e.g. uint16 holding dB × 100): applied
  per band, the file's nodata stays nodata (NaN after decoding).
- **mask and alpha bands** (an internal/sidecar mask, or an alpha band): a pixel the mask marks 0 is
  read as the scene's fill, so it is never counted valid; an alpha band is never a data band.
- **float optical holding DN** (0–10000 stored as float32): with ``optical.scale: auto`` a float
  file is reflectance only when its sampled 99th percentile is ≤ ``REFLECTANCE_P99_MAX`` (1.5: bright
  snow and cloud stay below ~1.2); above it, and up to 65535, it is DN and divided by 10000
  (``FLOAT_DN_SCALE``); anything else is refused. Before, every such pixel sat at the 0.5 clip.

Decoding happens in ``Scene.read_window`` (and after the warp for SAR on another grid), so the
engine, training and evaluation all see the decoded values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.errors import InputError

REFLECTANCE_P99_MAX = 1.5
FLOAT_DN_SCALE = 10000.0  # the Sentinel-2 / Landsat convention for DN per unit reflectance
FLOAT_DN_MAX = 65535.0  # above the uint16 range a float optical file is no DN we know


@dataclass
class Decoding:
    """What `decode` does to a window of one file (picklable, compared by value)."""

    complex_mode: str | None = None  # "intensity" (|z|²) or "amplitude" (|z|); None: not complex
    scales: tuple[float, ...] | None = None  # per selected band, when any tag is not (1, 0)
    offsets: tuple[float, ...] | None = None
    mask: str | None = None  # "mask band" or "alpha band": read the GDAL mask of each band
    divide: float | None = None  # float optical holding DN: divided by this (→ reflectance)
    raw_nodata: float | None = None  # the file's nodata, in stored units
    rules: list[str] = field(default_factory=list)

    @property
    def to_float(self) -> bool:
        """Whether decoded values are float32 (complex, scaled or divided input)."""
        return self.complex_mode is not None or self.scales is not None or self.divide is not None

    def decoded_dtype(self, file_dtype: str) -> str:
        """What the normalisation sees: float32 once a rule computes values (complex, scale, DN division)."""
        return "float32" if self.to_float else file_dtype

    def decoded_nodata(self, nodata: float | None) -> float | None:
        """The nodata value in decoded units: NaN once values become float (nodata is mapped)."""
        if self.to_float and nodata is not None:
            return float("nan")
        return nodata

    def decode(self, raw: np.ndarray, masks: np.ndarray | None, fill: float) -> np.ndarray:
        """bands×h×w stored values → decoded values; `masks` (bands×h×w, 0 = masked) → `fill`."""
        out = raw
        nodata_px = None
        if self.raw_nodata is not None and self.to_float:
            nodata_px = (
                np.isnan(raw) if np.isnan(self.raw_nodata) else raw == self.raw_nodata
            ).any(axis=0)
        if self.complex_mode is not None:
            power = np.square(np.abs(raw).astype(np.float32))
            out = power if self.complex_mode == "intensity" else np.sqrt(power)
        elif self.scales is not None:
            sc = np.asarray(self.scales, np.float32)[:, None, None]
            off = np.asarray(self.offsets, np.float32)[:, None, None]
            out = raw.astype(np.float32) * sc + off
        elif self.divide is not None:
            out = raw.astype(np.float32) / np.float32(self.divide)
        if nodata_px is not None:
            out[:, nodata_px] = np.nan
        if masks is not None:
            masked = (masks == 0).any(axis=0)
            if masked.any():
                out = out.copy() if out is raw else out
                out[:, masked] = fill
        return out


def float_optical_divisor(sample: np.ndarray, uri: str) -> tuple[float | None, str]:
    """(divisor, rule) for a float optical file with `optical.scale: auto`, from valid samples.

    Raises InputError when the values fit neither reflectance nor DN (see module docstring)."""

    values = sample[np.isfinite(sample)]
    if values.size == 0:
        return None, "float optical: no valid sample, read as reflectance"
    p99 = float(np.percentile(values, 99))
    if p99 <= REFLECTANCE_P99_MAX:
        return (
            None,
            f"float optical, 99th percentile {p99:.3g} ≤ {REFLECTANCE_P99_MAX}: reflectance",
        )
    if p99 <= FLOAT_DN_MAX:
        return FLOAT_DN_SCALE, (
            f"float optical, 99th percentile {p99:.4g} > {REFLECTANCE_P99_MAX}: DN, "
            f"reflectance = DN / {FLOAT_DN_SCALE:g} (set optical.scale to override)"
        )
    raise InputError(
        uri,
        f"float optical values up to {p99:.4g} (99th percentile) are neither reflectance "
        f"(≤ {REFLECTANCE_P99_MAX}) nor DN (≤ {FLOAT_DN_MAX:g}): set optical.scale (DN per unit "
        "reflectance)",
    )


CLIPPED_MAX = 0.95  # more than this share of valid samples at a clip bound: a constant input


def clipped_fraction(normalised: np.ndarray, lo: float, hi: float) -> float:
    """Share of pixels (bands×N samples) whose every band is at the normalised clip bound."""
    if normalised.size == 0:
        return 0.0
    at_bound = (normalised <= lo) | (normalised >= hi)
    return float(at_bound.all(axis=0).mean())
