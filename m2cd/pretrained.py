"""The models that ship with the project: checkpoints under ``m2cd/weights/<name>/``.

A new user's first map must mean something, so a trained model travels with the code (package
data of the wheel, fp16 safetensors of at most 30 MB, each with its MODEL_CARD.md) and is the
default wherever a model is not named. ``DEFAULT_MODEL`` is the one detect, the flows and the
fine-tuning recipe use; a new version replaces it only when its recorded metrics improve.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from m2cd.checkpoint import CheckpointError
from m2cd.config import ModelConfig

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_MODEL = "ombria_mit_b0"


def shipped_models() -> list[str]:
    """Names of the checkpoints shipped in ``m2cd/weights``."""
    if not WEIGHTS_DIR.is_dir():
        return []
    return sorted(p.name for p in WEIGHTS_DIR.iterdir() if (p / "checkpoint.json").is_file())


def shipped_checkpoint(name: str = DEFAULT_MODEL) -> Path:
    """The directory of a shipped checkpoint (CheckpointError naming the choices otherwise)."""
    path = WEIGHTS_DIR / name
    if not (path / "checkpoint.json").is_file():
        raise CheckpointError(
            f"{path}: no shipped model {name!r} (shipped: {', '.join(shipped_models()) or 'none'})"
        )
    return path


PROBE_PIXELS = ((0, 0), (17, 101), (64, 64), (100, 30), (127, 127))


def probe_output(model: nn.Module) -> list[float]:
    """Change probability of a fixed seeded 128² input at five pixels.

    Recorded in a shipped checkpoint's provenance when it is shipped; the test suite recomputes
    it, so a changed weight file, loader or forward cannot pass unnoticed.
    """
    config = model.config
    assert isinstance(config, ModelConfig), "an m2cd model (m2cd.build_model / load_checkpoint)"
    bands = config.bands
    gen = torch.Generator().manual_seed(0)
    opt = torch.randn(1, bands.optical_channels, 128, 128, generator=gen).clamp(-2, 2)
    sar = torch.rand(1, bands.sar_channels, 128, 128, generator=gen) * 2 - 1
    with torch.no_grad():
        prob = torch.softmax(model.eval()(opt, sar).float(), 1)[0, 1]
    return [round(float(prob[y, x]), 6) for y, x in PROBE_PIXELS]
