"""Score a predicted change mask against a label raster: change-class P/R/F1/IoU, OA, kappa.

Both rasters are decoded with the training label rule (``labels.label_encoding``, decided from the
whole file, not from the scored window): 0/1 with 255 = nodata, or 0/255. The label is placed on the
prediction's grid as training places it on the image grid (``labels.LabelReader``: nearest, pixels
outside its footprint ignored, refused when it cannot be placed), so a shifted or reprojected label
is scored where it lies, not by array index. A prediction holding float values strictly inside
(0, 1) is a probability raster, refused with a pointer to ``--prob`` (it used to read as "no
change"). Pixels that are nodata/ignore in *either* raster are not counted (a prediction
outside the valid area is not an error of the model, and an unlabelled pixel is not ground truth).
Counts are summed over the whole window (spec §14: confusion accumulated, not averaged per image).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from m2cd.metrics import ConfusionMatrix
from pipeline.errors import InputError
from pipeline.io.grid import GridInfo
from pipeline.training.labels import (
    IGNORE,
    LabelReader,
    _open,
    decode_label,
    file_values,
    label_encoding,
)


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


def _grid(uri: str) -> Any:
    """The pixel grid of a raster (what the label is placed on)."""

    with _open(uri) as src:
        crs = src.crs if not (src.crs is None and src.transform.is_identity) else None
        return GridInfo(crs, src.transform, (src.height, src.width))


def _read_on(uri: str, grid: Any, window: tuple[int, int, int, int] | None):
    """(raw window on `grid`, outside-footprint mask, nodata) of a raster placed on `grid`."""
    reader = LabelReader(uri, grid)
    raw, outside = reader.read(window)
    return raw, outside, reader.nodata


def _decoded(uri: str, grid: Any, window: tuple[int, int, int, int] | None) -> np.ndarray:
    raw, outside, nodata = _read_on(uri, grid, window)
    out = decode_label(raw, label_encoding(file_values(uri)[0], uri), nodata)
    out[outside] = IGNORE
    return out


def _refuse_probability(uri: str) -> None:
    """A --pred raster with float values strictly inside (0, 1) is a probability: refuse it."""
    values = np.asarray(sorted(file_values(uri)[0]), dtype=np.float64)
    if ((values > 0) & (values < 1)).any():
        raise InputError(
            uri,
            "holds values between 0 and 1: a change probability, not a mask; pass it as --prob "
            "(fits the threshold) or threshold it first",
        )


def read_probability(
    uri: str, window: tuple[int, int, int, int] | None, grid: Any = None
) -> np.ndarray:
    """A change-probability raster (e.g. change_prob.tif) as float32, its nodata as NaN."""
    raw, outside, nodata = _read_on(uri, grid if grid is not None else _grid(uri), window)
    prob = raw.astype(np.float32)
    if nodata is not None and not np.isnan(nodata):
        prob[raw == nodata] = np.nan
    prob[outside] = np.nan
    finite = prob[np.isfinite(prob)]
    if finite.size and (finite.min() < 0 or finite.max() > 1):
        raise InputError(uri, "not a change probability: values outside 0..1")
    return prob


def evaluate_files(
    pred_uri: str, label_uri: str, window: tuple[int, int, int, int] | None = None
) -> dict[str, Any]:
    """Read both rasters (local or s3://), optionally only a pixel window of the prediction's
    grid, place the label on that grid and score them."""
    _refuse_probability(pred_uri)
    grid = _grid(pred_uri)
    pred = _decoded(pred_uri, grid, window)
    label = _decoded(label_uri, grid, window)
    out = evaluate_arrays(pred, label)
    out.update(pred=pred_uri, label=label_uri, window=list(window) if window else None)
    return out


def fit_threshold_files(
    prob_uri: str, label_uri: str, window: tuple[int, int, int, int] | None = None
) -> dict[str, Any]:
    """`fit_threshold` on a probability raster and a label (local or s3://, optional window):
    the best threshold, the metrics at it and F1 per threshold."""
    grid = _grid(prob_uri)
    prob = read_probability(prob_uri, window, grid)
    label = _decoded(label_uri, grid, window)
    best, scores = fit_threshold(prob, label)
    with np.errstate(invalid="ignore"):
        mask = np.where(np.isnan(prob), IGNORE, prob >= best).astype(np.uint8)
    out = {"threshold": best, **evaluate_arrays(mask, label), "f1_by_threshold": scores}
    out.update(prob=prob_uri, label=label_uri, window=list(window) if window else None)
    return out
