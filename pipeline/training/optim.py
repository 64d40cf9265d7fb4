"""Spec §8.2 as code: AdamW parameter groups and the warm-up + poly learning-rate factor.

Groups are decided by module *type* (every parameter owned directly by a normalisation layer gets no
weight decay) and by top-level child name for the head (lr × head_lr_mult). The official configs match
the substring "norm" in parameter names, which misses MiT's stage-final LayerNorms ("layers.i.2");
matching by type does not. Modules named ``pos_block`` (MiT positional convs) get no decay either.

The schedule is a pure function of the step, so the scheduler has no state of its own to save:
resuming at step k sets exactly the lr an uninterrupted run had at step k.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pipeline.training.config import OptimConfig

NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm*, SyncBatchNorm, InstanceNorm*
    nn.LayerNorm,  # includes timm LayerNorm2d (a subclass)
    nn.GroupNorm,
    nn.LocalResponseNorm,
)
if hasattr(nn, "RMSNorm"):
    NORM_TYPES = (*NORM_TYPES, nn.RMSNorm)


def _no_decay_names(model: nn.Module) -> set[str]:
    names: set[str] = set()
    for mod_name, module in model.named_modules():
        is_pos = mod_name.split(".")[-1] == "pos_block" or any(
            part == "pos_block" for part in mod_name.split(".")
        )
        if isinstance(module, NORM_TYPES) or is_pos:
            recurse = is_pos
            for p_name, _ in module.named_parameters(recurse=recurse):
                names.add(f"{mod_name}.{p_name}" if mod_name else p_name)
    return names


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict[str, Any]]:
    """Up to four groups: (backbone|head) × (decay|no decay); each carries its base lr."""
    no_decay = _no_decay_names(model)
    heads = set(cfg.head_modules)
    buckets: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        key = (name.split(".")[0] in heads, name in no_decay)
        buckets.setdefault(key, []).append(param)
    groups = []
    for (is_head, is_nd), params in sorted(buckets.items()):
        lr = cfg.lr * (cfg.head_lr_mult if is_head else 1.0)
        groups.append(
            {
                "params": params,
                "lr": lr,
                "base_lr": lr,
                "weight_decay": 0.0 if is_nd else cfg.weight_decay,
                "name": f"{'head' if is_head else 'body'}{'_no_decay' if is_nd else ''}",
            }
        )
    return groups


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over `param_groups` (head lr multiplier; no weight decay where `_no_decay_names` says),
    as the official mmseg recipe trains."""
    return torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, betas=cfg.betas)


def lr_factor(step: int, total: int, cfg: OptimConfig) -> float:
    """Linear warm-up from warmup_factor to 1 (times) poly decay (1 - step/total)^power (mmseg)."""
    poly = max(0.0, 1.0 - step / max(total, 1)) ** cfg.poly_power
    poly = cfg.min_lr_factor + (1.0 - cfg.min_lr_factor) * poly
    if step < cfg.warmup_steps:
        warm = cfg.warmup_factor + (1.0 - cfg.warmup_factor) * step / cfg.warmup_steps
        return warm * poly
    return poly


def set_lr(optimizer: torch.optim.Optimizer, step: int, total: int, cfg: OptimConfig) -> float:
    """Set every group's lr for this step; returns the factor."""
    factor = lr_factor(step, total, cfg)
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
    return factor
