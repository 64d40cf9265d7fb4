"""Checkpoints: a directory with ``weights.safetensors`` + ``checkpoint.json``; never unpickles.

The digest (SHA-256 of the weights file) identifies a model everywhere (products, registry, cache);
loading refuses a checkpoint whose weights no longer match it (tampered or truncated).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from m2cd.model import build_model

FORMAT = "m2cd-checkpoint/1"
WEIGHTS = "weights.safetensors"
META = "checkpoint.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the path and the problem."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def checkpoint_digest(path: str | Path) -> str:
    """``sha256:<hex>`` of the checkpoint's weights file (computed, not read from the JSON)."""
    weights = Path(path) / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{path}: not a checkpoint directory ({WEIGHTS} missing)")
    return _sha256(weights)


def save_checkpoint(
    model: nn.Module,
    path: str | Path,
    provenance: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
) -> str:
    """Write the checkpoint (files replaced atomically, weights first) and return its digest.

    ``dtype`` (e.g. torch.float16) stores the floating-point tensors at that precision: half the
    bytes for a shipped model (the MiT-b0 M²CD is 28 MB in fp32, 14 MB in fp16); loading casts
    them back into the fp32 model.
    """

    config = getattr(model, "config", None)
    if config is None:
        raise CheckpointError(f"{path}: model has no .config (build it with m2cd.build_model)")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    tmp_w = path / f".{WEIGHTS}.{os.getpid()}.tmp"
    save_file(state, str(tmp_w))
    digest = _sha256(tmp_w)

    meta = {
        "format": FORMAT,
        "model": config.model_dump(mode="json"),
        "provenance": {
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "torch": torch.__version__,
            "timm": timm.__version__,
            **(provenance or {}),
        },
        "digest": digest,
    }
    tmp_m = path / f".{META}.{os.getpid()}.tmp"
    tmp_m.write_text(json.dumps(meta, indent=2, sort_keys=True))
    os.replace(tmp_w, path / WEIGHTS)
    os.replace(tmp_m, path / META)
    return digest


def update_provenance(path: str | Path, fields: dict[str, Any]) -> None:
    """Add ``fields`` to a checkpoint's provenance (e.g. a threshold fitted after training); the
    weights and so the digest are untouched. The JSON is replaced atomically."""
    path = Path(path)
    meta = read_checkpoint_meta(path)
    meta["provenance"] = {**meta.get("provenance", {}), **fields}
    tmp = path / f".{META}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True))
    os.replace(tmp, path / META)


def read_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """The parsed checkpoint.json, checked for format and keys."""
    meta_path = Path(path) / META
    if not meta_path.is_file():
        raise CheckpointError(f"{path}: not a checkpoint directory ({META} missing)")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{meta_path}: not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path}: unknown format (expected {FORMAT!r})")
    for key in ("model", "digest"):
        if key not in meta:
            raise CheckpointError(f"{meta_path}: missing key {key!r}")
    return meta


def verify_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint's metadata once its weights are proven to be the ones it records: the one
    digest check (loads and the engine's plan-time check both use it). Also refuses a file that
    is not safetensors before anything parses it (a pickle planted under the name never loads)."""

    path = Path(path)
    meta = read_checkpoint_meta(path)
    actual = checkpoint_digest(path)
    if actual != meta["digest"]:
        raise CheckpointError(
            f"{path / WEIGHTS}: digest mismatch (recorded {meta['digest']}, file {actual}); "
            "the weights were modified or truncated"
        )
    try:  # the header only
        with safe_open(str(path / WEIGHTS), framework="pt"):
            pass
    except Exception as exc:  # noqa: BLE001  (safetensors raises its own error types)
        raise CheckpointError(
            f"{path / WEIGHTS}: not a safetensors file ({exc}); refusing to load it"
        ) from None
    return meta


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", verify: bool = True
) -> nn.Module:
    """Verify the digest, rebuild the model from its config, load the weights; eval mode.

    `verify=False` is for a caller that ran `verify_checkpoint` on these very files in this
    process (the engine at plan time): the weights are then hashed once per run, not twice.
    A distillation teacher named in the config is not attached (training does that).
    """

    path = Path(path)
    meta = verify_checkpoint(path) if verify else read_checkpoint_meta(path)
    try:
        model = build_model(meta["model"])
    except ValueError as exc:
        raise CheckpointError(f"{path / META}: invalid model config: {exc}") from exc
    device = str(map_location)
    try:
        state = load_file(str(path / WEIGHTS), device=device)
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{path / WEIGHTS}: unreadable safetensors file ({exc})") from exc
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # tensors of another shape: JSON and weights of different models
        first = str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)
        raise CheckpointError(
            f"{path / WEIGHTS}: weights do not fit the config ({first})"
        ) from None
    if missing or unexpected:
        raise CheckpointError(
            f"{path / WEIGHTS}: weights do not fit the config (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]})"
        )
    return model.to(map_location).eval()
