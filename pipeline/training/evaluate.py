"""Score a predicted change mask against a label raster: change-class P/R/F1/IoU, OA, kappa.

Both rasters are decoded with the training label rule (``data.label_encoding``): 0/1 with 255 =
nodata, or 0/255. Pixels that are nodata/ignore in *either* raster are not counted (a prediction
outside the valid area is not an error of the model, and an unlabelled pixel is not ground truth).
Counts are summed over the whole window (spec §14: confusion accumulated, not averaged per image).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from m2cd.metrics import ConfusionMatrix
from pipeline.errors import InputError
from pipeline.training.data import IGNORE, decode_label, label_encoding, read_label_raw


def evaluate_arrays(pred: np.ndarray, label: np.ndarray) -> dict[str, Any]:
    """pred 0/1 (255 = no prediction), label 0/1 (255 = ignore), same shape -> metrics dict."""

    pred, label = np.asarray(pred), np.asarray(label)
    if pred.shape != label.shape:
        raise ValueError(f"prediction {pred.shape} and label {label.shape} differ in shape")
    target = np.where(pred == IGNORE, IGNORE, label)
    cm = ConfusionMatrix(2, ignore=IGNORE).update(np.where(pred == IGNORE, 0, pred), target)
    out = cm.to_dict()
    out["ignored_pixels"] = int((target == IGNORE).sum())
    return out


THRESHOLDS = tuple(float(t) for t in np.round(np.arange(0.05, 0.951, 0.05), 2))


def fit_threshold(prob: np.ndarray, label: np.ndarray) -> tuple[float, dict[float, float]]:
    """The decision threshold (of THRESHOLDS) with the best change F1, and F1 per threshold.

    prob: change probability, NaN = no prediction; label 0/1 with 255 = ignore. Fit it on
    labelled pixels the model will not be judged on (the training strip), as the baselines are.
    Ties go to the threshold nearest 0.5.
    """
    scores = {}
    for t in THRESHOLDS:
        with np.errstate(invalid="ignore"):
            pred = np.where(np.isnan(prob), IGNORE, prob >= t).astype(np.uint8)
        scores[t] = float(evaluate_arrays(pred, label)["f1"])
    best = max(THRESHOLDS, key=lambda t: (scores[t], -abs(t - 0.5)))
    return best, scores


def _decoded(uri: str, window: tuple[int, int, int, int] | None) -> np.ndarray:
    raw, nodata = read_label_raw(uri, window)
    values = {int(v) for v in np.unique(raw) if nodata is None or v != nodata}
    return decode_label(raw, label_encoding(values, uri), nodata)


def read_probability(uri: str, window: tuple[int, int, int, int] | None) -> np.ndarray:
    """A change-probability raster (e.g. change_prob.tif) as float32, its nodata as NaN."""
    raw, nodata = read_label_raw(uri, window)
    prob = raw.astype(np.float32)
    if nodata is not None and not np.isnan(nodata):
        prob[raw == nodata] = np.nan
    finite = prob[np.isfinite(prob)]
    if finite.size and (finite.min() < 0 or finite.max() > 1):
        raise InputError(uri, "not a change probability: values outside 0..1")
    return prob


def evaluate_files(
    pred_uri: str, label_uri: str, window: tuple[int, int, int, int] | None = None
) -> dict[str, Any]:
    """Read both rasters (local or s3://), optionally only a pixel window, and score them."""
    pred = _decoded(pred_uri, window)
    label = _decoded(label_uri, window)
    if pred.shape != label.shape:
        raise InputError(
            pred_uri, f"shape {pred.shape} differs from the label {label_uri} {label.shape}"
        )
    out = evaluate_arrays(pred, label)
    out.update(pred=pred_uri, label=label_uri, window=list(window) if window else None)
    return out


def fit_threshold_files(
    prob_uri: str, label_uri: str, window: tuple[int, int, int, int] | None = None
) -> dict[str, Any]:
    """`fit_threshold` on a probability raster and a label (local or s3://, optional window):
    the best threshold, the metrics at it and F1 per threshold."""
    prob = read_probability(prob_uri, window)
    label = _decoded(label_uri, window)
    if prob.shape != label.shape:
        raise InputError(
            prob_uri, f"shape {prob.shape} differs from the label {label_uri} {label.shape}"
        )
    best, scores = fit_threshold(prob, label)
    with np.errstate(invalid="ignore"):
        mask = np.where(np.isnan(prob), IGNORE, prob >= best).astype(np.uint8)
    out = {"threshold": best, **evaluate_arrays(mask, label), "f1_by_threshold": scores}
    out.update(prob=prob_uri, label=label_uri, window=list(window) if window else None)
    return out
