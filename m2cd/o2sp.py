"""O2SP (spec §5): a pseudo-SAR view of the optical input and the per-stage guide loss.

Training only. Noise is sampled on the input's device (no CPU sampling, no host sync).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from m2cd.config import O2SPConfig


def _gamma(shape: torch.Size, concentration: Tensor, rate: Tensor) -> Tensor:
    """Gamma samples of ``shape`` on the device of the (scalar) parameters."""
    # validate_args=False: argument validation would call .all() on device tensors (a host sync)
    dist = torch.distributions.Gamma(
        concentration.expand(shape), rate.expand(shape), validate_args=False
    )
    return dist.sample()


def pseudo_sar(optical: Tensor, cfg: O2SPConfig) -> Tensor:
    """Optical ⊙ Gamma speckle.

    official: x·G on the normalised input; G ~ Gamma(shape 1/v, scale v) (mean 1, variance v) with
        v ~ U{var_min..var_max} drawn once per call for the whole batch, i.i.d. per pixel and channel.
    looks: I = clamp(x·std + mean, 0) is the linear intensity equivalent, I·G with
        G ~ Gamma(shape L, scale 1/L) (mean 1, variance 1/L: L-look intensity speckle), then
        normalised back with the same mean/std. mean/std must match the input normalisation.
    """
    x = optical.float()
    dev = x.device
    if cfg.noise == "official":
        v = torch.randint(cfg.var_min, cfg.var_max + 1, (1,), device=dev).float()
        g = _gamma(x.shape, 1.0 / v, 1.0 / v)  # rate = 1/scale = 1/v
        return (x * g).to(optical.dtype)
    c = x.shape[1]
    mean = _per_channel(cfg.input_mean, c, dev)
    std = _per_channel(cfg.input_std, c, dev)
    looks = torch.tensor(cfg.looks, device=dev)
    g = _gamma(x.shape, looks, looks)
    intensity = (x * std + mean).clamp_min(0.0)
    return ((intensity * g - mean) / std).to(optical.dtype)


def _per_channel(values: tuple[float, ...], channels: int, device: torch.device) -> Tensor:
    if len(values) not in (1, channels):
        raise ValueError(
            f"o2sp input_mean/input_std need 1 or {channels} values, got {len(values)}"
        )
    t = torch.tensor(values, device=device, dtype=torch.float32)
    return (
        t.expand(channels).view(1, channels, 1, 1) if t.numel() == 1 else t.view(1, channels, 1, 1)
    )


def guide_loss(opt: Tensor, sar: Tensor, pse: Tensor, cfg: O2SPConfig) -> Tensor:
    """weight·[d(F_opt, F_pse) + d(F_sar, F_pse)] for one stage; no stop-gradient (as official)."""
    dist = F.l1_loss if cfg.loss == "l1" else F.mse_loss
    return cfg.guide_weight * (dist(opt, pse) + dist(sar, pse))
