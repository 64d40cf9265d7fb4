"""Plan-time check that a checkpoint's weights fit the model its JSON describes.

A checkpoint whose ``checkpoint.json`` was edited (or paired with other weights) used to pass the
digest check, stage the run, and die in the first block with a PyTorch size-mismatch traceback.
The tensor shapes are compared here from the safetensors header (no tensor is read) against the
model built from the JSON on the ``meta`` device (no memory, ~0.1 s for the tiny model), so the run
is refused in one line before anything is written.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from m2cd.model import build_model
from pipeline.errors import InputError
from pipeline.io import storage

WEIGHTS = "weights.safetensors"


def _header_shapes(path: Path) -> dict[str, tuple[int, ...]]:

    with safe_open(str(path), framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118


def _model_shapes(model_cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:

    cfg = copy.deepcopy(model_cfg)
    if isinstance(cfg.get("backbone"), dict):
        cfg["backbone"]["pretrained"] = None  # shapes only: never load backbone weights here
    with torch.device("meta"):
        model = build_model(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_weights_fit(checkpoint: str | None) -> None:
    """InputError naming the weights file and the first mismatching tensors; local checkpoints
    only (a remote one is verified when it is downloaded)."""
    if checkpoint is None or storage.is_remote(checkpoint):
        return
    root = Path(checkpoint)
    meta = storage.read_json(str(root / "checkpoint.json"))
    try:
        expected = _model_shapes(meta["model"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(str(root / "checkpoint.json"), f"invalid model config ({exc})") from None
    found = _header_shapes(root / WEIGHTS)
    wrong = [
        f"{k} {found[k]} vs {shape}"
        for k, shape in expected.items()
        if k in found and found[k] != shape
    ]
    missing = [k for k in expected if k not in found]
    if wrong or missing:
        detail = "; ".join(wrong[:2]) if wrong else f"missing {missing[:3]}"
        raise InputError(
            str(root / WEIGHTS),
            f"the weights do not fit the model in checkpoint.json ({len(wrong)} tensor(s) of "
            f"another shape, {len(missing)} missing: {detail}); checkpoint.json and the weights "
            "come from different models",
        )
