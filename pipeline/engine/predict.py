"""The forward pass of the engine: fixed-shape batches and test-time augmentation (TTA).

Batches always have `batch_size` tiles (the last padded), so a tile's result never depends on how
many tiles share its batch; with TTA each tile runs in the 8 dihedral views, every view mapped back
and summed in a fixed order, so the average is the same bits on every run.
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch
from torch import nn

from pipeline.engine import models
from pipeline.engine.device import autocast_dtype
from pipeline.engine.stage_times import stage


class Predictor:
    """Runs fixed-shape batches: N×C×T×T numpy in, change probability N×T×T float32 out."""

    def __init__(
        self,
        model: nn.Module,
        batch_size: int,
        device: torch.device | None = None,
        precision: str = "fp32",
        channels_last: bool = True,
        tta: bool = False,
    ):
        self.device = device if device is not None else torch.device("cpu")
        self.batch_size = batch_size
        self.views = DIHEDRAL if tta else DIHEDRAL[:1]
        self.dtype = autocast_dtype(self.device, precision)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        # cached models are shared by block threads: convert once, never mid-forward
        with models.cache_lock:
            if getattr(model, "_m2cd_prepared", None) != (str(self.device), channels_last):
                model = model.eval().to(self.device).to(memory_format=self.memory_format)
                setattr(model, "_m2cd_prepared", (str(self.device), channels_last))  # noqa: B010
        self.model = model

    def _tensor(self, batch: np.ndarray) -> torch.Tensor:
        n = batch.shape[0]
        if n < self.batch_size:  # pad: a tile's result never depends on the batch's fill
            pad = np.zeros((self.batch_size - n, *batch.shape[1:]), dtype=batch.dtype)
            batch = np.concatenate([batch, pad])
        t = torch.from_numpy(np.ascontiguousarray(batch))
        return t.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)

    def __call__(self, optical: np.ndarray, sar: np.ndarray) -> np.ndarray:
        """Change probability N×T×T float32 of N ≤ batch_size tiles (padded to the batch)."""
        n = optical.shape[0]
        if n > self.batch_size:
            raise ValueError(f"batch of {n} tiles exceeds batch_size {self.batch_size}")
        with stage("transfer"):
            opt_t, sar_t = self._tensor(optical), self._tensor(sar)
        with stage("model"):
            prob = change_probability(self.model, opt_t, sar_t, self.views, self.dtype)
        with stage("transfer"):  # the synchronising copy: on a GPU it also waits for the model
            return prob[:n].cpu().numpy().astype(np.float32, copy=False)


def change_probability(
    model: nn.Module,
    optical: torch.Tensor,
    sar: torch.Tensor,
    views: tuple[tuple[int, bool], ...] = ((0, False),),
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The one forward of the project: change-class probability N×H×W, averaged over `views`
    (each mapped back, summed in a fixed order), under autocast `dtype` (None: fp32). The engine's
    Predictor and the evaluation scripts both call it, so a TTA figure is the engine's figure."""
    amp = (
        torch.autocast(device_type=optical.device.type, dtype=dtype)
        if dtype is not None
        else nullcontext()
    )
    prob = None
    for k, flip in views:
        with torch.inference_mode(), amp:
            logits = model(to_view(optical, k, flip), to_view(sar, k, flip))
        p = from_view(torch.softmax(logits.float(), dim=1)[:, 1], k, flip)
        prob = p if prob is None else prob + p
    assert prob is not None, "at least one view"
    if len(views) > 1:
        prob = prob / len(views)
    return prob


# the 8 flips/rotations of a square tile: (quarter turns, then a left-right flip)
DIHEDRAL = tuple((k, flip) for k in range(4) for flip in (False, True))


def to_view(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """`x` (…×H×W) turned `k` quarter turns, then flipped left-right when `flip`."""
    if k == 0 and not flip:
        return x
    x = torch.rot90(x, k, dims=(-2, -1))
    return torch.flip(x, dims=(-1,)) if flip else x


def from_view(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """The inverse of `to_view`: maps a view's output back onto the tile."""
    if k == 0 and not flip:
        return x
    x = torch.flip(x, dims=(-1,)) if flip else x
    return torch.rot90(x, -k, dims=(-2, -1))
