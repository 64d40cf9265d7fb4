"""Score a predicted change mask against a label raster: change-class P/R/F1/IoU, OA, kappa.

Both rasters are decoded with the training label rule (``data.label_encoding``): 0/1 with 255 =
nodata, or 0/255. Pixels that are nodata/ignore in *either* raster are not counted (a prediction
outside the valid area is not an error of the model, and an unlabelled pixel is not ground truth).
Counts are summed over the whole window (spec §14: confusion accumulated, not averaged per image).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.errors import InputError
from pipeline.training.data import IGNORE, _read_label_raw, decode_label, label_encoding


def evaluate_arrays(pred: np.ndarray, label: np.ndarray) -> dict[str, Any]:
    """pred 0/1 (255 = no prediction), label 0/1 (255 = ignore), same shape -> metrics dict."""
    from m2cd.metrics import ConfusionMatrix

    pred, label = np.asarray(pred), np.asarray(label)
    if pred.shape != label.shape:
        raise ValueError(f"prediction {pred.shape} and label {label.shape} differ in shape")
    target = np.where(pred == IGNORE, IGNORE, label)
    cm = ConfusionMatrix(2, ignore=IGNORE).update(np.where(pred == IGNORE, 0, pred), target)
    out = cm.to_dict()
    out["ignored_pixels"] = int((target == IGNORE).sum())
    return out


def _decoded(uri: str, window: tuple[int, int, int, int] | None) -> np.ndarray:
    raw, nodata = _read_label_raw(uri, window)
    values = {int(v) for v in np.unique(raw) if nodata is None or v != nodata}
    return decode_label(raw, label_encoding(values, uri), nodata)


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
