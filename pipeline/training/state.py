"""Exact-resume training state without pickle: tensors in safetensors, everything else in JSON.

Saved beside an m2cd checkpoint (``DIR/last/train_state.safetensors`` + ``train_state.json``): the
optimizer state flattened to ``optim.<param index>.<key>`` tensors plus its JSON param groups, the
step, the best score so far, the RNG states of python, numpy (global and the trainer's
generator) and torch (CPU and CUDA), and the weights of a *moving* distillation teacher (the EMA of
the student, ``teacher.<name>`` tensors): it lives outside the student's checkpoint on purpose
(``m2cd.distill``), yet its state shapes every later distillation loss. A frozen checkpoint teacher
is not saved: it is reloaded (digest-checked) from its own directory. Restoring all of them makes a
resumed run bit-identical.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from pipeline.errors import InputError

STATE_TENSORS = "train_state.safetensors"
STATE_JSON = "train_state.json"
FORMAT = "m2cd-train-state/1"


def _py_rng() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _np_global() -> list[Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]


def save_state(
    path: str | Path,
    optimizer: torch.optim.Optimizer,
    rng: np.random.Generator,
    extra: dict[str, Any],
    scaler: torch.amp.GradScaler | None = None,
    teacher: nn.Module | None = None,
) -> None:
    """Write the two state files into ``path`` (each replaced atomically).

    ``teacher``: the network of an EMA teacher (its state changes every step), or None.
    """

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for pid, entry in sd["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{key}"] = value.detach().to("cpu").contiguous()
            else:
                plain.setdefault(str(pid), {})[key] = value
    if teacher is not None:
        for name, value in teacher.state_dict().items():
            tensors[f"teacher.{name}"] = value.detach().to("cpu").contiguous()
    tensors["rng.torch_cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.torch_cuda.{i}"] = s
    meta = {
        "format": FORMAT,
        "param_groups": sd["param_groups"],
        "optim_plain_state": plain,
        "rng": {
            "python": _py_rng(),
            "numpy_global": _np_global(),
            "generator": rng.bit_generator.state,
        },
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "teacher": teacher is not None,
        **extra,
    }
    tmp_t = path / f".{STATE_TENSORS}.{os.getpid()}.tmp"
    tmp_j = path / f".{STATE_JSON}.{os.getpid()}.tmp"
    save_file(tensors, str(tmp_t))
    tmp_j.write_text(json.dumps(meta))
    os.replace(tmp_t, path / STATE_TENSORS)
    os.replace(tmp_j, path / STATE_JSON)


def has_state(path: str | Path) -> bool:
    """Whether `path` holds a resumable training state: both files, since either alone is a save cut
    short."""
    return (Path(path) / STATE_JSON).is_file() and (Path(path) / STATE_TENSORS).is_file()


def load_state(
    path: str | Path,
    optimizer: torch.optim.Optimizer,
    rng: np.random.Generator,
    scaler: torch.amp.GradScaler | None = None,
    teacher: nn.Module | None = None,
) -> dict[str, Any]:
    """Restore optimizer, RNGs (scaler, EMA teacher) in place; returns the JSON metadata.

    A state saved with a teacher must be restored into one and vice versa: resuming an EMA run
    with a fresh teacher (or none) would silently change every later distillation loss.
    """

    path = Path(path)
    try:
        meta = json.loads((path / STATE_JSON).read_text())
        tensors = load_file(str(path / STATE_TENSORS))
    except (OSError, json.JSONDecodeError, Exception) as exc:  # safetensors has its own errors
        raise InputError(str(path), f"unreadable training state ({exc})") from None
    if meta.get("format") != FORMAT:
        raise InputError(
            str(path / STATE_JSON), f"unknown training-state format (expected {FORMAT})"
        )
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = value
    for pid, entry in meta["optim_plain_state"].items():
        state.setdefault(int(pid), {}).update(entry)
    groups = meta["param_groups"]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError) as exc:
        raise InputError(
            str(path), f"training state does not fit this model/recipe ({exc})"
        ) from None
    py = meta["rng"]["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, pos, has_gauss, cached = meta["rng"]["numpy_global"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    rng.bit_generator.state = meta["rng"]["generator"]
    torch.set_rng_state(tensors["rng.torch_cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.torch_cuda.")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    if scaler is not None and meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])
    _restore_teacher(path, tensors, teacher)
    return meta


def _restore_teacher(
    path: Path, tensors: dict[str, torch.Tensor], teacher: nn.Module | None
) -> None:

    saved = {k[len("teacher.") :]: v for k, v in tensors.items() if k.startswith("teacher.")}
    if teacher is None and not saved:
        return
    if teacher is None:
        raise InputError(
            str(path / STATE_TENSORS),
            "holds an EMA teacher but the model being resumed has none (distill.teacher changed?)",
        )
    if not saved:
        raise InputError(
            str(path / STATE_TENSORS),
            "holds no EMA teacher state but the model uses distill.teacher: ema; resuming would "
            "restart the teacher from the student and not continue exactly",
        )
    try:
        teacher.load_state_dict(saved, strict=True)
    except RuntimeError as exc:
        raise InputError(
            str(path / STATE_TENSORS), f"EMA teacher state does not fit this model ({exc})"
        ) from None
