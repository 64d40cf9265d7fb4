"""Chips for training: random crops of labelled areas (exact resume) and validation tiles.

Kept apart from ``pipeline.training.data`` (which reads labelled areas): sampling is what varies
between recipes, reading is what must stay identical to inference.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from pipeline.errors import ConfigError, InputError
from pipeline.training.data import IGNORE, LabelledArea


def _pad_to(area: LabelledArea, tile: int) -> LabelledArea:
    """Areas smaller than a chip are padded with ignore (zeros in the inputs)."""
    h, w = area.shape
    ph, pw = max(tile - h, 0), max(tile - w, 0)
    if not ph and not pw:
        return area
    pad3 = ((0, 0), (0, ph), (0, pw))
    return LabelledArea(
        np.pad(area.optical, pad3),
        np.pad(area.sar, pad3),
        np.pad(area.label, ((0, ph), (0, pw)), constant_values=IGNORE),
        area.name,
    )


class ChipSampler:
    """Random chips from labelled areas, drawn with a caller-owned generator (exact resume).

    Areas are picked in proportion to their labelled pixels. With ``change_fraction`` > 0 that share
    of chips is centred on a random changed pixel, which helps when change is a few % of an area.
    """

    def __init__(self, areas: list[LabelledArea], tile: int, change_fraction: float = 0.0):
        if not areas:
            raise ConfigError("no training areas: give at least one train window or tile")
        self.tile = tile
        self.areas = [_pad_to(a, tile) for a in areas]
        counts = np.array([(a.label != IGNORE).sum() for a in self.areas], dtype=np.float64)
        if counts.sum() == 0:
            raise InputError(
                areas[0].name or "training data", "every training pixel is ignore/nodata"
            )
        self.weights = counts / counts.sum()
        self.change_fraction = change_fraction
        self.changed = [np.flatnonzero(a.label.ravel() == 1) for a in self.areas]

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One chip: optical C×T×T, SAR C×T×T, label T×T."""
        i = int(rng.choice(len(self.areas), p=self.weights))
        area, t = self.areas[i], self.tile
        h, w = area.shape
        if (
            self.change_fraction > 0
            and self.changed[i].size
            and rng.random() < self.change_fraction
        ):
            flat = int(self.changed[i][rng.integers(self.changed[i].size)])
            cy, cx = divmod(flat, w)
            y0 = int(np.clip(cy - t // 2 + rng.integers(-t // 4, t // 4 + 1), 0, h - t))
            x0 = int(np.clip(cx - t // 2 + rng.integers(-t // 4, t // 4 + 1), 0, w - t))
        else:
            y0 = int(rng.integers(0, h - t + 1))
            x0 = int(rng.integers(0, w - t + 1))
        sl = (slice(y0, y0 + t), slice(x0, x0 + t))
        return area.optical[(slice(None), *sl)], area.sar[(slice(None), *sl)], area.label[sl]


def iter_val_tiles(
    areas: list[LabelledArea], tile: int
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Non-overlapping tiles covering every validation area (edges padded with ignore)."""
    for area in areas:
        h, w = area.shape
        for y0 in range(0, h, tile):
            for x0 in range(0, w, tile):
                y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
                sub = LabelledArea(
                    area.optical[:, y0:y1, x0:x1],
                    area.sar[:, y0:y1, x0:x1],
                    area.label[y0:y1, x0:x1],
                    area.name,
                )
                sub = _pad_to(sub, tile)
                yield sub.optical, sub.sar, sub.label


def class_weights(areas: list[LabelledArea]) -> tuple[float, float]:
    """Inverse-sqrt-frequency CE weights (unchanged, changed), normalised to mean 1."""
    counts = np.zeros(2)
    for a in areas:
        counts += np.bincount(a.label[a.label != IGNORE].ravel(), minlength=2)[:2]
    freq = np.maximum(counts / max(counts.sum(), 1), 1e-3)
    w = 1 / np.sqrt(freq)
    w = w / w.mean()
    return float(w[0]), float(w[1])
