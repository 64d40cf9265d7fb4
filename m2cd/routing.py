"""Which expert each token goes to, per MoE stage and per modality (eval forwards only).

The paper's argument for the MoE is that a shared encoder can still treat optical and SAR tokens
differently if the router sends them to different experts. ``record_routing`` observes the
routers during eval forwards (forward hooks; the model is not changed), and ``routing_shares``
turns the records into the share of each modality's tokens that each expert takes, which shows
whether the experts specialise by modality.

In eval mode the model runs the optical and SAR stems as one batch ``[optical N; SAR N]`` (see
``M2CD.forward``), so the first half of every routed batch is optical and the second half SAR.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from m2cd.moe import MoE


@dataclass
class StageRouting:
    """Top-k expert membership of one stage's tokens: ``selected[b, y, x, e]`` is True when token
    (y, x) of batch item b was routed to expert e (k experts per token)."""

    stage: int
    top_k: int
    selected: list[np.ndarray] = field(default_factory=list)  # one 2N×H×W×E bool per forward

    def modality(self, name: str) -> np.ndarray:
        """M×H×W×E membership of the optical (first half) or SAR (second half) tokens."""
        halves = []
        for sel in self.selected:
            n = sel.shape[0] // 2
            halves.append(sel[:n] if name == "optical" else sel[n:])
        return np.concatenate(halves)


@contextmanager
def record_routing(model: nn.Module) -> Iterator[list[StageRouting]]:
    """Record the routing of every eval forward run inside the block, one entry per MoE stage."""
    moes = [m for m in model.modules() if isinstance(m, MoE)]
    records = [StageRouting(stage=i, top_k=m.top_k) for i, m in enumerate(moes)]
    shapes: dict[int, tuple[int, int, int]] = {}
    handles = []
    for i, moe in enumerate(moes):

        def pre(_module: nn.Module, args: tuple, i: int = i) -> None:
            n, _, h, w = args[0].shape
            shapes[i] = (n, h, w)

        def post(_module: nn.Module, _args: tuple, logits: torch.Tensor, i: int = i) -> None:
            n, h, w = shapes[i]
            k = records[i].top_k
            idx = logits.float().topk(k, dim=-1).indices  # eval: no gating noise
            sel = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, idx, True)
            records[i].selected.append(sel.view(n, h, w, -1).cpu().numpy())

        handles.append(moe.register_forward_pre_hook(pre))
        handles.append(moe.router.register_forward_hook(post))
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()


def routing_shares(records: list[StageRouting]) -> list[dict[str, object]]:
    """Per stage: each expert's share of optical and of SAR tokens (each row sums to 1), the
    share of SAR among each expert's tokens, and the total-variation distance between the two
    modalities' expert distributions (0: routed alike, 1: disjoint experts)."""
    out = []
    for rec in records:
        opt = rec.modality("optical").reshape(-1, rec.selected[0].shape[-1]).mean(0) / rec.top_k
        sar = rec.modality("sar").reshape(-1, rec.selected[0].shape[-1]).mean(0) / rec.top_k
        out.append(
            {
                "stage": rec.stage + 1,
                "optical_share": [round(float(v), 4) for v in opt],
                "sar_share": [round(float(v), 4) for v in sar],
                "sar_fraction_of_expert": [
                    round(float(s / (o + s)), 4) if o + s > 0 else None
                    for o, s in zip(opt, sar, strict=True)
                ],
                "modality_tv_distance": round(float(0.5 * np.abs(opt - sar).sum()), 4),
            }
        )
    return out
