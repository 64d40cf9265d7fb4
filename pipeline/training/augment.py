"""Chip augmentations: joint geometry, optical-only photometric shifts, SAR-only radiometric ones.

Why per modality: the two sensors fail differently. Optical scenes differ by illumination,
atmosphere and sensor gains (brightness/contrast/band gains); SAR scenes differ by calibration
(a dB offset), dynamic range and speckle (multiplicative Gamma noise, i.e. additive in dB). Applying
optical colour jitter to SAR would teach the model artefacts SAR never has. Random per-image shifts
are what keep a model trained on a small strip from memorising that strip's absolute levels.

Optical stays input A and SAR input B: no time exchange (spec §8.3 removes it with O2SP).
All randomness comes from the caller's ``numpy.random.Generator`` so training resumes exactly.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import affine_transform

from pipeline.training.config import AugmentConfig
from pipeline.training.data import IGNORE

Chip = tuple[np.ndarray, np.ndarray, np.ndarray]


def rotate(chip: Chip, degrees: float) -> Chip:
    """Rotate all three arrays about the chip centre by ``degrees`` (counter-clockwise), same size.

    Images are interpolated bilinearly and the label by nearest neighbour, with the *same* mapping,
    so the label stays aligned. Pixels that come from outside the chip are 0 in the images and
    ignore (255) in the label: the loss and metrics never count them (the official augmentation
    pads its label with 255 the same way).
    """

    opt, sar, lab = chip
    h, w = lab.shape
    theta = np.deg2rad(degrees)
    c, s = np.cos(theta), np.sin(theta)
    # output (row, col) -> input (row, col): rotation about the centre
    matrix = np.array([[c, s], [-s, c]])
    centre = np.array([(h - 1) / 2, (w - 1) / 2])
    offset = centre - matrix @ centre

    def warp(a: np.ndarray, order: int, cval: float) -> np.ndarray:
        return affine_transform(a, matrix, offset, order=order, mode="constant", cval=cval)

    opt_r = np.stack([warp(b, 1, 0.0) for b in opt]).astype(np.float32, copy=False)
    sar_r = np.stack([warp(b, 1, 0.0) for b in sar]).astype(np.float32, copy=False)
    lab_r = warp(lab, 0, IGNORE).astype(np.uint8, copy=False)
    # a pixel whose bilinear footprint reaches outside the chip is padding as well
    inside = warp(np.ones((h, w), np.float32), 1, 0.0) > 0.999
    lab_r[~inside] = IGNORE
    opt_r[:, ~inside] = 0.0
    sar_r[:, ~inside] = 0.0
    return opt_r, sar_r, lab_r


def geometric(chip: Chip, cfg: AugmentConfig, rng: np.random.Generator) -> Chip:
    """The same flip / rot90 / free rotation on optical, SAR and label (label stays aligned)."""
    opt, sar, lab = chip
    if cfg.rot90:
        k = int(rng.integers(4))
        if k:
            opt, sar, lab = (np.rot90(a, k, axes=(-2, -1)) for a in (opt, sar, lab))
    if cfg.flip:
        if rng.random() < 0.5:
            opt, sar, lab = (a[..., :, ::-1] for a in (opt, sar, lab))
        if rng.random() < 0.5:
            opt, sar, lab = (a[..., ::-1, :] for a in (opt, sar, lab))
    if cfg.rotate_degrees and rng.random() < cfg.rotate_p:  # no draw when off: streams unchanged
        angle = float(rng.uniform(-cfg.rotate_degrees, cfg.rotate_degrees))
        opt, sar, lab = rotate((opt, sar, lab), angle)
    return opt, sar, lab


def optical_photometric(
    opt: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator
) -> np.ndarray:
    """Per-image brightness, contrast (about the image mean), per-band gain and Gaussian noise."""
    out = opt.astype(np.float32, copy=True)
    if cfg.optical_contrast and rng.random() < cfg.p:
        mean = out.mean(axis=(-2, -1), keepdims=True)
        out = (out - mean) * rng.uniform(1 - cfg.optical_contrast, 1 + cfg.optical_contrast) + mean
    if cfg.optical_channel_gain and rng.random() < cfg.p:
        g = rng.uniform(
            1 - cfg.optical_channel_gain, 1 + cfg.optical_channel_gain, (out.shape[0], 1, 1)
        )
        out = out * g.astype(np.float32)
    if cfg.optical_brightness and rng.random() < cfg.p:
        out = out + np.float32(rng.uniform(-cfg.optical_brightness, cfg.optical_brightness))
    if cfg.optical_noise and rng.random() < cfg.p:
        out = out + rng.normal(0, cfg.optical_noise, out.shape).astype(np.float32)
    return out.astype(np.float32, copy=False)


def sar_radiometric(
    sar: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator, units_per_db: float
) -> np.ndarray:
    """dB calibration offset, dB dynamic-range gain, speckle resampling and dB noise.

    ``units_per_db`` converts dB to the normalised SAR input (``pipeline.io.normalize`` maps σ⁰ dB
    linearly), so every amplitude in the config is in dB whatever the normalisation.
    """
    out = sar.astype(np.float32, copy=True)
    if cfg.sar_db_gain and rng.random() < cfg.p:
        mean = out.mean(axis=(-2, -1), keepdims=True)
        out = (out - mean) * rng.uniform(1 - cfg.sar_db_gain, 1 + cfg.sar_db_gain) + mean
    if cfg.sar_db_offset and rng.random() < cfg.p:
        out = out + np.float32(rng.uniform(-cfg.sar_db_offset, cfg.sar_db_offset) * units_per_db)
    if cfg.sar_speckle_looks and rng.random() < cfg.p:
        looks = cfg.sar_speckle_looks
        g = rng.gamma(looks, 1.0 / looks, out.shape[-2:]).astype(np.float32)
        out = out + (10.0 * np.log10(np.maximum(g, 1e-6)) * units_per_db)[None]
    if cfg.sar_noise_db and rng.random() < cfg.p:
        noise = rng.normal(0, cfg.sar_noise_db, (1, *out.shape[-2:]))  # replicated bands stay equal
        out = out + (noise * units_per_db).astype(np.float32)
    return out.astype(np.float32, copy=False)


def augment(
    chip: Chip, cfg: AugmentConfig, rng: np.random.Generator, sar_units_per_db: float
) -> Chip:
    """Full chain on one chip; returns contiguous copies."""
    opt, sar, lab = geometric(chip, cfg, rng)
    opt = optical_photometric(opt, cfg, rng)
    sar = sar_radiometric(sar, cfg, rng, sar_units_per_db)
    return np.ascontiguousarray(opt), np.ascontiguousarray(sar), np.ascontiguousarray(lab)
