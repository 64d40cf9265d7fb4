"""M²CD and its Siamese baselines (MoE disabled): shared encoder, per-stage MoE, MLP decoder."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from m2cd.backbones import build_encoder
from m2cd.config import ModelConfig, load_model_config
from m2cd.decoder import MLPDecoder
from m2cd.losses import distill_kl
from m2cd.moe import MoE
from m2cd.o2sp import guide_loss, pseudo_sar


class Teacher(Protocol):
    """What the model needs of a distillation teacher (pipeline.training.teacher builds them):
    logits for a batch, and a hook after each optimiser step."""

    def __call__(self, optical: Tensor, sar: Tensor) -> Tensor: ...

    def update(self, student: nn.Module) -> None:
        """Called after each optimiser step: an EMA teacher moves, a frozen one does nothing."""


class M2CD(nn.Module):
    """``model(optical, sar)``: eval → logits N×classes×H×W; train → (logits, aux losses).

    Inputs are normalised float tensors of any size; they are padded (zeros, bottom/right) to the
    backbone multiple and the logits are cropped back. In eval mode the two branches run as one
    batch (fewer, larger kernels); in training they run separately so that BatchNorm statistics and
    MoE balance statistics are per branch, as in the official code. O2SP never runs in eval mode.
    """

    _teacher: Teacher | None  # set with object.__setattr__: outside the module tree

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        bands = config.bands
        self.encoder = build_encoder(
            config.backbone, bands.optical_channels, bands.sar_channels, bands.separate_stems
        )
        chans = self.encoder.channels
        m = config.moe
        self.moes = (
            nn.ModuleList(
                [
                    MoE(c, m.experts, m.top_k, m.mid_ratio, m.noisy_gating, m.balance_weight)
                    for c in chans
                ]
            )
            if m.enabled
            else None
        )
        self.decoder = MLPDecoder(
            tuple(2 * c for c in chans), config.decoder.channels, config.decoder.num_classes
        )
        object.__setattr__(self, "_teacher", None)  # outside the module tree: never saved

    # -- teacher ---------------------------------------------------------------------------------
    @property
    def teacher(self) -> Teacher | None:
        """The attached distillation teacher (None at inference: build_model attaches none)."""
        return self._teacher

    def attach_teacher(self, teacher: Teacher | None) -> None:
        """Attach a teacher outside the module tree, so it never enters state_dict or checkpoints."""
        object.__setattr__(self, "_teacher", teacher)

    def update_teacher(self) -> None:
        """Call after each optimiser step (moves an EMA teacher; no-op otherwise)."""
        if self._teacher is not None:
            self._teacher.update(self)

    # -- inputs ----------------------------------------------------------------------------------
    def _check(self, optical: Tensor, sar: Tensor) -> tuple[Tensor, Tensor]:
        b = self.config.bands
        if optical.dim() != 4 or sar.dim() != 4:
            raise ValueError(
                f"expected N×C×H×W tensors, got optical {tuple(optical.shape)}, sar {tuple(sar.shape)}"
            )
        if optical.shape[0] != sar.shape[0] or optical.shape[-2:] != sar.shape[-2:]:
            raise ValueError(
                f"optical {tuple(optical.shape)} and sar {tuple(sar.shape)} differ in N, H or W"
            )
        if sar.shape[1] == 1 and b.sar_channels > 1:
            sar = sar.expand(-1, b.sar_channels, -1, -1)
        if optical.shape[1] != b.optical_channels or sar.shape[1] != b.sar_channels:
            raise ValueError(
                f"model expects {b.optical_channels} optical and {b.sar_channels} SAR channels, "
                f"got {optical.shape[1]} and {sar.shape[1]}"
            )
        return optical, sar

    def _pad(self, x: Tensor) -> Tensor:
        mult = self.config.pad_multiple
        h, w = x.shape[-2:]
        ph, pw = (-h) % mult, (-w) % mult
        return F.pad(x, (0, pw, 0, ph)) if ph or pw else x

    # -- encoder ---------------------------------------------------------------------------------
    def _encode(self, stems: Tensor, losses: list[Tensor]) -> list[Tensor]:
        """Stages (and MoEs) on already-stemmed input; appends balance losses in training."""
        enc, feats, x = self.encoder, [], stems
        for i in range(enc.num_stages):
            x = enc.stage(i, x)
            if self.moes is not None and enc.moe_in_path:
                x, loss = self.moes[i](x)
                if loss is not None:
                    losses.append(loss)
            feats.append(x)
        if self.moes is not None and not enc.moe_in_path:
            out = []
            for i, f in enumerate(feats):
                y, loss = self.moes[i](f)
                if loss is not None:
                    losses.append(loss)
                out.append(y)
            feats = out
        return feats

    def _encode_training(
        self, opt_p: Tensor, sar_p: Tensor
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        """Both branches apart (per-branch BatchNorm and MoE balance statistics, as the official
        code), the O2SP pseudo-SAR branch when enabled; features and auxiliary losses."""
        enc = self.encoder
        aux: dict[str, Tensor] = {}
        balance: list[Tensor] = []
        f_opt = self._encode(enc.stem(opt_p, "optical"), balance)
        f_sar = self._encode(enc.stem(sar_p, "sar"), balance)
        feats = [torch.cat([a, b], dim=1) for a, b in zip(f_opt, f_sar, strict=True)]
        if self.config.o2sp.enabled:
            f_pse = self._encode(enc.stem(pseudo_sar(opt_p, self.config.o2sp), "optical"), balance)
            aux["o2sp_guide"] = sum(  # type: ignore[assignment]  # a Tensor: ≥ 1 stage
                guide_loss(a, b, c, self.config.o2sp)
                for a, b, c in zip(f_opt, f_sar, f_pse, strict=True)
            )
        if balance:
            aux["moe_balance"] = torch.stack(balance).sum()
        return feats, aux

    def forward(self, optical: Tensor, sar: Tensor) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        """Eval: logits at the input size; train: (logits, aux losses) to add to the loss."""
        optical, sar = self._check(optical, sar)
        h, w = optical.shape[-2:]
        opt_p, sar_p = self._pad(optical), self._pad(sar)
        out_size = (opt_p.shape[-2] // 2, opt_p.shape[-1] // 2)
        enc = self.encoder
        aux: dict[str, Tensor] = {}
        if not self.training:  # one batch: fewer, larger kernels
            n = optical.shape[0]
            stems = torch.cat([enc.stem(opt_p, "optical"), enc.stem(sar_p, "sar")], dim=0)
            feats = [torch.cat([f[:n], f[n:]], dim=1) for f in self._encode(stems, [])]
        else:
            with _training_attention(opt_p.device):
                feats, aux = self._encode_training(opt_p, sar_p)
        logits = self.decoder(feats, out_size)
        logits = F.interpolate(logits, size=opt_p.shape[-2:], mode="bilinear", align_corners=False)
        logits = logits[..., :h, :w]
        if not self.training:
            return logits
        if self._teacher is not None and self.config.distill.weight > 0:
            t_logits = self._teacher(optical, sar)
            d = self.config.distill
            aux["distill"] = d.weight * distill_kl(logits, t_logits, d.temperature)
        return logits, aux


def _training_attention(device: torch.device) -> AbstractContextManager[None]:
    """On a CPU, training attention runs as plain matmul + softmax (SDPA's math backend).

    Why: MiT's spatial-reduction attention has few keys (16 at stage 1 of a 128² crop), where
    the CPU flash kernel's backward is slow: 151 ms of a MiT-b0 training step went to it, and
    the math backend made the step 7 % faster (1.66 -> 1.54 s, one thread, batch 16 of 128²).
    GPUs and inference keep PyTorch's choice.
    """
    if device.type != "cpu":
        return nullcontext()
    return sdpa_kernel([SDPBackend.MATH])


@contextmanager
def reference_order(model: nn.Module) -> Iterator[None]:
    """Within the block the MoEs and the decoder run in the official order.

    The official order is the sparse per-expert MoE (each expert only on its routed tokens) and
    the resize-concatenate-fuse decoder: the architecture's own FLOPs (spec §12), for
    `m2cd bench model`'s model-FLOP count and for tests. It has data-dependent shapes and host
    syncs, so it is never the default.
    """
    mods = [m for m in model.modules() if isinstance(m, (MoE, MLPDecoder))]
    for m in mods:
        m.reference = True
    try:
        yield
    finally:
        for m in mods:
            m.reference = False


def build_model(
    name_or_config: str | Path | dict[str, Any] | ModelConfig = "m2cd_mit_b1",
    **overrides: Any,
) -> M2CD:
    """Build from a config name (configs/model/NAME.yaml), YAML path, dict or ModelConfig.

    ``overrides`` are dotted (``**{"moe.enabled": False}``) or nested (``moe={"top_k": 1}``).
    Pure: no teacher is attached, nothing is read but the config (training attaches the teacher
    ``distill.teacher`` names, ``pipeline.training.teacher.attach_teacher``).
    """
    return M2CD(load_model_config(name_or_config, **overrides))
