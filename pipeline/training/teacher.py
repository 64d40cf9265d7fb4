"""Teachers for self-distillation (beyond the official code, which has none; spec §9).

A teacher is kept *outside* the student's module tree, so it never enters the student's state dict,
its parameters or its checkpoint. Attaching one is a training step (a frozen teacher is a checkpoint
read from disk), so it lives here and not in the pure model constructor `m2cd.build_model`.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from m2cd.checkpoint import load_checkpoint
from m2cd.config import DistillConfig
from m2cd.model import M2CD


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
        """Move the teacher's weights towards the student's by `1 - decay`; integer buffers (BN step
        counts) are copied."""
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
    return Teacher(load_checkpoint(cfg.teacher))


def attach_teacher(model: M2CD) -> M2CD:
    """Attach the teacher the model's config names (`distill.teacher`) and return the model:
    training calls it after loading any initial weights, so an EMA starts from those weights."""
    model.attach_teacher(build_teacher(model.config.distill, model))
    return model
