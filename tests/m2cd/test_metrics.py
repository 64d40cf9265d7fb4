"""Confusion-matrix metrics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from m2cd.metrics import ConfusionMatrix


def test_metrics_match_hand_computation_over_batches_with_ignore():
    # batch 1: TP=2 FP=1 FN=1 TN=2 ; batch 2 (torch, with 255 ignored): TP=1 FN=1 TN=1
    cm = ConfusionMatrix(num_classes=2, ignore=255)
    cm.update(np.array([1, 1, 1, 0, 0, 0]), np.array([1, 1, 0, 1, 0, 0]))
    cm.update(torch.tensor([[1, 0, 0, 1]]), torch.tensor([[1, 1, 0, 255]]))
    tp, fp, fn, tn = 3, 1, 2, 3
    n = tp + fp + fn + tn
    d = cm.to_dict()
    assert d["precision"] == pytest.approx(tp / (tp + fp))
    assert d["recall"] == pytest.approx(tp / (tp + fn))
    p, r = tp / (tp + fp), tp / (tp + fn)
    assert d["f1"] == pytest.approx(2 * p * r / (p + r))
    assert d["iou"] == pytest.approx(tp / (tp + fp + fn))
    oa = (tp + tn) / n
    assert d["oa"] == pytest.approx(oa)
    pe = ((tp + fp) * (tp + fn) + (fn + tn) * (fp + tn)) / n**2
    assert d["kappa"] == pytest.approx((oa - pe) / (1 - pe))
    assert d["iou_per_class"][0] == pytest.approx(tn / (tn + fn + fp))
    assert d["miou"] == pytest.approx((tn / (tn + fn + fp) + tp / (tp + fp + fn)) / 2)
    assert d["pixels"] == n


def test_logits_are_argmaxed_and_empty_classes_do_not_divide_by_zero():
    cm = ConfusionMatrix()
    logits = torch.zeros(1, 2, 2, 2)
    logits[:, 0] = 1.0  # predicts "unchanged" everywhere
    cm.update(logits, torch.zeros(1, 2, 2, dtype=torch.long))
    d = cm.to_dict()
    assert d["oa"] == 1.0 and d["f1"] == 0.0 and d["iou"] == 0.0
    assert np.isfinite(d["kappa"])


def test_bad_inputs_raise():
    cm = ConfusionMatrix()
    with pytest.raises(ValueError, match="does not match"):
        cm.update(np.zeros((2, 2)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="class indices"):
        cm.update(np.array([2]), np.array([1]))
