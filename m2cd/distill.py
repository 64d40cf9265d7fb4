"""Teachers for self-distillation (beyond the official code, which has none; spec §9).

A teacher is kept *outside* the student's module tree, so it never enters the student's state dict,
its parameters or its checkpoint.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from m2cd.config import DistillConfig


class Teacher:
    """A frozen network in eval mode whose logits the student is pulled towards."""

    def __init__(self, net: nn.Module):
        self.net = net.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def __call__(self, optical: Tensor, sar: Tensor) -> Tensor:
        ref = next(self.net.parameters())
        if ref.device != optical.device:
            self.net.to(optical.device)
        return self.net(optical, sar)

    def update(self, student: nn.Module) -> None:  # noqa: B027  (frozen teachers do nothing)
        """Called after each optimiser step; only the EMA teacher changes."""


class EMATeacher(Teacher):
    """Exponential moving average of the student's weights (BN buffers copied)."""

    def __init__(self, student: nn.Module, decay: float):
        super().__init__(copy.deepcopy(student))
        self.decay = decay

    @torch.no_grad()
    def update(self, student: nn.Module) -> None:
        s_state = student.state_dict()
        for name, t in self.net.state_dict().items():
            s = s_state[name].to(t.device)
            if t.dtype.is_floating_point:
                t.mul_(self.decay).add_(s, alpha=1.0 - self.decay)
            else:
                t.copy_(s)


def build_teacher(cfg: DistillConfig, student: nn.Module) -> Teacher | None:
    """None, an EMA of ``student``, or a frozen checkpoint (verified by digest)."""
    if cfg.teacher == "none":
        return None
    if cfg.teacher == "ema":
        return EMATeacher(student, cfg.ema_decay)
    from m2cd.checkpoint import load_checkpoint

    return Teacher(load_checkpoint(cfg.teacher))
