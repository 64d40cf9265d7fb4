"""Simple baselines a user could run instead of a network, fitted on the same training pixels.

- ``sar_threshold``: SAR σ⁰ (dB, normalised) after a small mean filter (3, 5 or 7 px), thresholded. The sign is
  fitted too (darker = change for floods, brighter for new buildings); the threshold maximises the
  change-class F1 on the training pixels.
- ``log_difference``: a cross-modal log-ratio: z-scored log optical brightness minus z-scored SAR dB
  (both log scales, so their difference is a log-ratio up to the per-image standardisation), mean
  filtered, sign and threshold fitted like above. A same-sensor log-ratio does not exist for an
  optical/SAR pair; this is its closest honest analogue.

Inputs are the arrays that ``pipeline.training.data`` produces (normalised, as the model sees them).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from scipy.ndimage import uniform_filter

from pipeline.training.data import IGNORE

BaselineName = Literal["sar_threshold", "log_difference"]


@dataclass(frozen=True)
class ThresholdModel:
    """A fitted single-feature threshold baseline: what a learned model must beat to be worth its
    cost."""

    name: str
    sign: int  # +1: change where score > threshold, -1: where score < threshold
    threshold: float
    filter_size: int
    train_f1: float

    def to_dict(self) -> dict:
        """The fitted values as JSON-ready plain types for the evaluation report."""
        return asdict(self)


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Threshold t maximising F1 of (scores > t) against labels 0/1 (exact, O(n log n))."""
    s, y = np.asarray(scores, np.float64).ravel(), np.asarray(labels).ravel().astype(bool)
    positives = int(y.sum())
    if positives == 0 or s.size == 0:
        return float(np.inf), 0.0
    order = np.argsort(-s, kind="stable")
    s_sorted, tp = s[order], np.cumsum(y[order])
    # predicting the top k is only realisable where the next score is strictly lower
    k = np.arange(1, s.size + 1)
    distinct = np.r_[s_sorted[1:] < s_sorted[:-1], True]
    f1 = np.where(distinct, 2 * tp / (k + positives), -1.0)
    i = int(np.argmax(f1))
    t = (s_sorted[i] + s_sorted[i + 1]) / 2 if i + 1 < s.size else s_sorted[i] - 1e-6
    return float(t), float(f1[i])


def _brightness(optical: np.ndarray) -> np.ndarray:
    """Log of optical brightness: normalised input back to [0, 1] of the reflectance clip."""
    refl = np.clip(optical.mean(axis=0) * 0.25 + 0.5, 0, 1)  # inverse of pipeline.io.normalize
    return np.log(refl + 1e-3)


def _z(x: np.ndarray, valid: np.ndarray) -> np.ndarray:
    v = x[valid]
    return (x - v.mean()) / (v.std() + 1e-6) if v.size else x


def score_map(
    name: BaselineName, optical: np.ndarray, sar: np.ndarray, valid: np.ndarray, size: int
) -> np.ndarray:
    """The per-pixel score each baseline thresholds."""
    if name == "sar_threshold":
        raw = sar.mean(axis=0)
    elif name == "log_difference":
        raw = _z(_brightness(optical), valid) - _z(sar.mean(axis=0), valid)
    else:
        raise ValueError(f"unknown baseline {name!r}")
    return uniform_filter(raw.astype(np.float64), size=size, mode="nearest") if size > 1 else raw


def fit(
    name: BaselineName,
    optical: np.ndarray,
    sar: np.ndarray,
    label: np.ndarray,
    train_mask: np.ndarray,
    sizes: tuple[int, ...] = (3, 5, 7),
) -> ThresholdModel:
    """Fit filter size, sign and threshold on the labelled pixels of ``train_mask``."""
    valid = label != IGNORE
    sel = train_mask & valid
    best: ThresholdModel | None = None
    for size in sizes:
        score = score_map(name, optical, sar, valid, size)
        for sign in (1, -1):
            t, f1 = best_threshold(sign * score[sel], label[sel] == 1)
            if best is None or f1 > best.train_f1:
                best = ThresholdModel(name, sign, sign * t, size, f1)
    assert best is not None
    return best


def predict(
    model: ThresholdModel, optical: np.ndarray, sar: np.ndarray, valid: np.ndarray
) -> np.ndarray:
    """0/1 change mask of a whole scene."""
    score = score_map(model.name, optical, sar, valid, model.filter_size)  # type: ignore[arg-type]
    hit = score > model.threshold if model.sign > 0 else score < model.threshold
    return hit.astype(np.uint8)
