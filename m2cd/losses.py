"""Segmentation losses and the distillation KL (pure functions on logits)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def cross_entropy(logits: Tensor, target: Tensor, ignore_index: int = 255) -> Tensor:
    """Pixel-wise softmax CE averaged over non-ignored pixels (the official loss; OHEM is a no-op)."""
    return F.cross_entropy(logits.float(), target.long(), ignore_index=ignore_index)


def dice_loss(logits: Tensor, target: Tensor, ignore_index: int = 255, eps: float = 1.0) -> Tensor:
    """Soft Dice of the change class (class 1), ignoring ``ignore_index`` pixels."""
    prob = torch.softmax(logits.float(), dim=1)[:, 1]
    valid = (target != ignore_index).float()
    tgt = (target == 1).float() * valid
    inter = (prob * tgt * valid).sum()
    denom = (prob * valid).sum() + tgt.sum()
    return 1.0 - (2.0 * inter + eps) / (denom + eps)


def distill_kl(student: Tensor, teacher: Tensor, temperature: float = 1.0) -> Tensor:
    """T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)), summed over classes and pixels, divided by N."""
    t = temperature
    log_p_s = F.log_softmax(student.float() / t, dim=1)
    log_p_t = F.log_softmax(teacher.float() / t, dim=1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="sum", log_target=True) / student.shape[0]
    return kl * t * t
