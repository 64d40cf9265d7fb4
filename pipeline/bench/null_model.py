"""The null model: the model contract at no cost, to measure the engine's own ceiling.

It returns a fixed function of its inputs computed on the device (change logit = optical channel 0
minus SAR channel 0, so the probability is its sigmoid) and takes the bands of a real named config,
so reads, channel matching, normalisation, transfers, blending and writes are exactly those of a run
of that model: only the forward's cost is gone.
"""

from __future__ import annotations

import torch
from torch import nn

from m2cd.config import load_model_config
from pipeline.engine.models import ModelRef, preload, state_digest


class NullModel(nn.Module):
    """N×C×H×W optical and SAR in, N×2×H×W logits out: (0, optical₀ − SAR₀)."""

    def __init__(self, bands_of: str) -> None:
        super().__init__()
        self.config = load_model_config(bands_of)  # the engine reads the bands from it
        self.register_buffer("gain", torch.ones(()))  # a digest of its own, never a real model's

    def forward(self, optical: torch.Tensor, sar: torch.Tensor) -> torch.Tensor:
        """Two logits from a channel difference: costs ~nothing, yet depends on every input pixel, so the engine cannot skip work the real model would need."""
        diff = (optical[:, 0] - sar[:, 0]) * self.gain
        return torch.stack([torch.zeros_like(diff), diff], dim=1)


def install_null_model(bands_of: str, device: torch.device) -> ModelRef:
    """A NullModel in this process's model cache; runs whose plan names the returned ref use it."""
    model = NullModel(bands_of)
    ref = ModelRef(name=bands_of, digest=state_digest(model))
    preload(ref, model, device)
    return ref
