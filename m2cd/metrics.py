"""Confusion-matrix metrics accumulated over batches (spec §14), with an ignore value for nodata."""

from __future__ import annotations

from typing import Any

import numpy as np


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach().to("cpu").numpy()
    return np.asarray(x)


class ConfusionMatrix:
    """Counts[target, prediction] over everything seen; pixels whose target is ``ignore`` are skipped.

    ``update(pred, target)`` takes class indices (torch or numpy, any shape; logits N×C×... are
    argmaxed over dim 1 when ``pred`` has one more dimension than ``target``).
    """

    def __init__(self, num_classes: int = 2, ignore: int | None = 255):
        self.num_classes = num_classes
        self.ignore = ignore
        self.counts = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, pred: Any, target: Any) -> ConfusionMatrix:
        """Add one prediction/target pair; pixels equal to the ignore value are not counted."""
        p, t = _to_numpy(pred), _to_numpy(target)
        if p.ndim == t.ndim + 1:
            p = p.argmax(axis=1)
        if p.shape != t.shape:
            raise ValueError(f"prediction shape {p.shape} does not match target shape {t.shape}")
        p, t = p.reshape(-1).astype(np.int64), t.reshape(-1).astype(np.int64)
        keep = np.ones_like(t, dtype=bool) if self.ignore is None else t != self.ignore
        p, t = p[keep], t[keep]
        k = self.num_classes
        if t.size and (t.min() < 0 or t.max() >= k or p.min() < 0 or p.max() >= k):
            raise ValueError(f"class indices must lie in [0, {k}) (ignore value {self.ignore})")
        self.counts += np.bincount(t * k + p, minlength=k * k).reshape(k, k)
        return self

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another matrix's counts (e.g. from another worker)."""
        self.counts += other.counts
        return self

    def per_class(self) -> dict[str, np.ndarray]:
        """Precision, recall, F1 and IoU per class (0 where a class has no support, not NaN)."""
        c = self.counts.astype(np.float64)
        tp = np.diag(c)
        fp = c.sum(0) - tp
        fn = c.sum(1) - tp
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
            recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
            f1 = np.where(
                precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0
            )
            iou = np.where(tp + fp + fn > 0, tp / (tp + fp + fn), 0.0)
        return {"precision": precision, "recall": recall, "f1": f1, "iou": iou}

    def overall_accuracy(self) -> float:
        """Fraction of counted pixels that are right (dominated by no-change: read with F1)."""
        total = self.counts.sum()
        return float(np.trace(self.counts) / total) if total else 0.0

    def kappa(self) -> float:
        """Cohen's kappa: (OA − p_e)/(1 − p_e), p_e from the row and column marginals."""
        c = self.counts.astype(np.float64)
        n = c.sum()
        if n == 0:
            return 0.0
        pe = float((c.sum(0) * c.sum(1)).sum() / n**2)
        oa = self.overall_accuracy()
        return (oa - pe) / (1 - pe) if pe < 1 else 0.0

    def to_dict(self, change_class: int = 1) -> dict[str, Any]:
        """Change-class P/R/F1/IoU (what CD papers report), per-class lists, means, OA, kappa."""
        pc = self.per_class()
        out: dict[str, Any] = {f"{name}": float(v[change_class]) for name, v in pc.items()}
        out.update({f"{name}_per_class": [float(x) for x in v] for name, v in pc.items()})
        out.update({f"m{name}": float(v.mean()) for name, v in pc.items()})
        out.update(
            oa=self.overall_accuracy(),
            kappa=self.kappa(),
            pixels=int(self.counts.sum()),
            confusion=self.counts.tolist(),
        )
        return out
