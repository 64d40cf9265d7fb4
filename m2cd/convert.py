"""Official open-cd/mmseg M²CD state dict (MiT backbones, MoE / MoE+O2SP / none) → ours.

Official key layout (circleLZY/M2CD, mmseg MixVisionTransformer + open-cd MoE_layer + MLPSegHead):
  backbone.layers.{i}.0.projection / .0.norm          overlapping patch embed (conv + LN)
  backbone.layers.{i}.1.{j}.norm1 / norm2             block LayerNorms
  backbone.layers.{i}.1.{j}.attn.attn.in_proj_*       nn.MultiheadAttention [q; k; v]
  backbone.layers.{i}.1.{j}.attn.attn.out_proj        output projection
  backbone.layers.{i}.1.{j}.attn.sr / attn.norm       spatial reduction (sr_ratio > 1)
  backbone.layers.{i}.1.{j}.ffn.layers.{0,1,4}        Mix-FFN: 1×1 conv, 3×3 depthwise, 1×1 conv
  backbone.layers.{i}.2                               stage LayerNorm
  backbone.ccs.{i}.experts.{e}.pointwise_conv{1,2}    expert Linears
  backbone.ccs.{i}.w_gate.{temperature,cosine_projector,sim_matrix}, backbone.ccs.{i}.w_noise
  decode_head.convs.{i}.{conv,bn}, decode_head.fusion_conv.{conv,bn}, decode_head.conv_seg
The O2SP stage adds no parameters, so MoE and MoE+O2SP checkpoints convert alike.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from m2cd.checkpoint import CheckpointError, save_checkpoint
from m2cd.config import deep_merge
from m2cd.model import build_model

try:  # numpy 2 moved the pickled scalar constructor; old checkpoints name numpy.core
    from numpy._core.multiarray import scalar
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import scalar  # type: ignore[no-redef]

_LAYER = re.compile(r"^backbone\.layers\.(\d+)\.")
_EXPERT = re.compile(r"^backbone\.ccs\.(\d+)\.experts\.(\d+)\.pointwise_conv([12])\.(weight|bias)$")


def _strip(state: dict[str, Tensor]) -> dict[str, Tensor]:
    out = {}
    for k, v in state.items():
        k = k.removeprefix("module.")
        out[k] = v
    return out


def infer_config(state: dict[str, Tensor]) -> dict[str, Any]:
    """Model config dict (backbone, MoE on/off) read from an official state dict's shapes."""
    state = _strip(state)
    key = "backbone.layers.0.0.projection.weight"
    if key not in state:
        raise CheckpointError(f"not an official M²CD MiT state dict: {key!r} missing")
    width = state[key].shape[0]
    backbone = {32: "mit_b0", 64: "mit_b1"}.get(width)
    if backbone is None:
        raise CheckpointError(
            f"unsupported MiT stage-1 width {width} (expected 32 for b0, 64 for b1)"
        )
    moe = any(_EXPERT.match(k) for k in state)
    return {"backbone": {"name": backbone}, "moe": {"enabled": moe}}


def convert_state_dict(official: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename/reshape an official state dict into ours (unknown official keys are an error)."""
    src = _strip(official)
    out: dict[str, Tensor] = {}
    used: set[str] = set()

    def take(key: str) -> Tensor:
        used.add(key)
        return src[key]

    stages = sorted({int(m.group(1)) for k in src if (m := _LAYER.match(k))})
    for i in stages:
        pre = f"backbone.layers.{i}"
        embed = "encoder.patch_embed" if i == 0 else f"encoder.stages.{i}.downsample"
        for p in ("weight", "bias"):
            out[f"{embed}.proj.{p}"] = take(f"{pre}.0.projection.{p}")
            out[f"{embed}.norm.{p}"] = take(f"{pre}.0.norm.{p}")
            out[f"encoder.stages.{i}.norm.{p}"] = take(f"{pre}.2.{p}")
        blocks = sorted({int(k.split(".")[4]) for k in src if k.startswith(f"{pre}.1.")})
        for j in blocks:
            b, o = f"{pre}.1.{j}", f"encoder.stages.{i}.blocks.{j}"
            for p in ("weight", "bias"):
                out[f"{o}.norm1.{p}"] = take(f"{b}.norm1.{p}")
                out[f"{o}.norm2.{p}"] = take(f"{b}.norm2.{p}")
                out[f"{o}.attn.proj.{p}"] = take(f"{b}.attn.attn.out_proj.{p}")
                if f"{b}.attn.sr.{p}" in src:
                    out[f"{o}.attn.sr.{p}"] = take(f"{b}.attn.sr.{p}")
                    out[f"{o}.attn.norm.{p}"] = take(f"{b}.attn.norm.{p}")
                qkv = take(f"{b}.attn.attn.in_proj_{p}")
                c = qkv.shape[0] // 3
                out[f"{o}.attn.q.{p}"] = qkv[:c].clone()
                out[f"{o}.attn.kv.{p}"] = qkv[c:].clone()
                fc1, dw, fc2 = (take(f"{b}.ffn.layers.{n}.{p}") for n in (0, 1, 4))
                out[f"{o}.mlp.fc1.{p}"] = fc1.flatten(1) if p == "weight" else fc1
                out[f"{o}.mlp.dwconv.{p}"] = dw
                out[f"{o}.mlp.fc2.{p}"] = fc2.flatten(1) if p == "weight" else fc2
    moe_stages = sorted({int(m.group(1)) for k in src if (m := _EXPERT.match(k))})
    for i in moe_stages:
        pre = f"backbone.ccs.{i}"
        experts = sorted(
            {int(m.group(2)) for k in src if (m := _EXPERT.match(k)) and int(m.group(1)) == i}
        )
        for n in (1, 2):
            for p in ("weight", "bias"):
                out[f"moes.{i}.fc{n}_{p}"] = torch.stack(
                    [take(f"{pre}.experts.{e}.pointwise_conv{n}.{p}") for e in experts]
                )
        out[f"moes.{i}.w_noise"] = take(f"{pre}.w_noise")
        out[f"moes.{i}.router.temperature"] = take(f"{pre}.w_gate.temperature").reshape(1)
        out[f"moes.{i}.router.sim_matrix"] = take(f"{pre}.w_gate.sim_matrix")
        for p in ("weight", "bias"):
            out[f"moes.{i}.router.cosine_projector.{p}"] = take(
                f"{pre}.w_gate.cosine_projector.{p}"
            )
        for buf in ("mean", "std"):  # Normal(0, 1) constants of the load estimator
            used.add(f"{pre}.{buf}")
    for k in src:
        head = k.startswith(
            ("decode_head.conv_seg.", "decode_head.convs.", "decode_head.fusion_conv.")
        )
        if head:
            out["decoder." + k.removeprefix("decode_head.")] = take(k)
    unused = sorted(k for k in src if k not in used and not k.startswith("auxiliary_head."))
    if unused:
        raise CheckpointError(
            f"official keys not understood: {unused[:8]}{' …' if len(unused) > 8 else ''}"
        )
    return out


def load_official(path: str | Path) -> dict[str, Tensor]:
    """The state dict of an official .pth (mmengine checkpoint or bare dict) without arbitrary unpickling.

    ``torch.load(weights_only=True)`` only rebuilds tensors and plain containers; numpy scalars that
    mmengine stores in ``meta`` are allowed explicitly.
    """

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    safe: list[Any] = [np.dtype, scalar]
    safe += [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32")]
    try:
        with torch.serialization.safe_globals(safe):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"{path}: cannot be read as a weights-only torch file ({exc})"
        ) from exc
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: no state dict of tensors found")
    return state


def convert_checkpoint(
    src: str | Path, dst: str | Path, o2sp: bool = False, extra_config: dict[str, Any] | None = None
) -> str:
    """Convert an official checkpoint file into our checkpoint directory; returns its digest."""

    official = load_official(src)
    cfg = infer_config(official)
    cfg["name"] = f"official_{cfg['backbone']['name']}" + (
        "_moe" if cfg["moe"]["enabled"] else "_none"
    )
    if o2sp:
        cfg["o2sp"] = {"enabled": True}
    cfg = deep_merge(cfg, extra_config or {})
    model = build_model(cfg)
    state = convert_state_dict(official)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{src}: converted weights do not fit {cfg['backbone']['name']} "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
        )

    sha = hashlib.sha256(Path(src).read_bytes()).hexdigest()
    return save_checkpoint(
        model.eval(), dst, provenance={"converted_from": str(src), "source_sha256": sha}
    )
