"""Encoders built from timm, exposed stage by stage so the MoE can sit *between* stages.

MiT-b0/b1 are timm's PVTv2 with MLP ratio 4 (exactly the mmseg MixVisionTransformer layout), ResNet-18
is ResNetV1c (deep 32-32-64 stem), MobileNetV3 is timm's output-stride-8 feature model tapped at the
mmseg layer indices of spec §3.3. timm is always built with ``pretrained=False``: weights come only
from a local file, so nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from safetensors.torch import load_file
from timm.models import adapt_input_conv
from torch import Tensor, nn

from m2cd.config import BackboneConfig

MIT_PRESETS = {
    "mit_b0": dict(widths=(32, 64, 160, 256), depths=(2, 2, 2, 2), heads=(1, 2, 5, 8)),
    "mit_b1": dict(widths=(64, 128, 320, 512), depths=(2, 2, 2, 2), heads=(1, 2, 5, 8)),
}
# Flat indices (timm blocks flattened) of the mmseg taps: Large (2,4,15), Small (1,5,12).
MBV3_TAPS = {"mobilenetv3_large": (1, 3, 14), "mobilenetv3_small": (0, 4, 11)}


def load_local_weights(module: nn.Module, path: str | Path) -> None:
    """Load timm-format weights from a local safetensors/.pth file (never unpickles objects).

    Classifier/head keys are ignored; any other missing or unexpected key is an error, so a wrong
    file cannot silently leave the encoder random.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: pretrained weights file not found")
    if path.suffix == ".safetensors":
        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = (
            state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else state
        )
    own = module.state_dict()
    for key, value in list(state.items()):
        if key in own and own[key].shape != value.shape and value.ndim == 4:
            # A stem with other bands: timm's rule for adapting the first conv.

            state[key] = adapt_input_conv(own[key].shape[1], value)
    head = ("head.", "fc.", "classifier.", "conv_head.")
    state = {k: v for k, v in state.items() if not k.startswith(head)}
    missing = [k for k in own if k not in state and not k.startswith(head)]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise ValueError(
            f"{path}: weights do not fit the encoder (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    module.load_state_dict({**own, **state}, strict=True)


class Encoder(nn.Module):
    """Stem + stages. ``moe_in_path``: the MoE output feeds the next stage (MiT/R18) or not (MBv3)."""

    channels: tuple[int, ...]
    moe_in_path: bool = True

    def __init__(self) -> None:
        super().__init__()
        self.sar_stem: nn.Module | None = None

    def stem(self, x: Tensor, modality: str) -> Tensor:
        """The modality's stem (SAR may have its own): NCHW input → first stage's input."""
        raise NotImplementedError

    def stage(self, i: int, x: Tensor) -> Tensor:
        """Run stage i on the previous stage's output; returns NCHW."""
        raise NotImplementedError

    @property
    def num_stages(self) -> int:
        """Number of feature stages (one MoE and one decoder input each)."""
        return len(self.channels)


class MiTEncoder(Encoder):
    """MiT (SegFormer) encoder from timm's pvt_v2, the paper's backbone (b0/b1)."""

    def __init__(self, cfg: BackboneConfig, in_chans: int, sar_chans: int | None):
        super().__init__()
        preset = MIT_PRESETS[cfg.name]
        widths = cfg.widths or preset["widths"]
        depths = cfg.depths or preset["depths"]
        heads = cfg.heads or preset["heads"]
        kwargs = dict(
            depths=depths,
            embed_dims=widths,
            num_heads=heads,
            mlp_ratios=(4, 4, 4, 4),
            sr_ratios=(8, 4, 2, 1),
            qkv_bias=True,
            drop_path_rate=cfg.drop_path,
            num_classes=0,
        )
        net = timm.create_model("pvt_v2_b1", pretrained=False, in_chans=in_chans, **kwargs)
        if cfg.pretrained:
            load_local_weights(net, cfg.pretrained)
        self.patch_embed = net.patch_embed
        self.stages = net.stages
        if sar_chans is not None:
            sar = timm.create_model("pvt_v2_b1", pretrained=False, in_chans=sar_chans, **kwargs)
            if cfg.pretrained:
                load_local_weights(sar, cfg.pretrained)
            self.sar_stem = sar.patch_embed
        for mod in self.modules():  # mmseg's MiT uses eps 1e-6 in every LayerNorm; timm mixes 1e-5
            if isinstance(mod, nn.LayerNorm):
                mod.eps = 1e-6
        self.channels = tuple(widths)

    def stem(self, x: Tensor, modality: str) -> Tensor:
        """Overlapping patch embedding of the modality (a separate SAR stem when configured)."""
        embed = (
            self.sar_stem if (modality == "sar" and self.sar_stem is not None) else self.patch_embed
        )
        return embed(x)  # N×H×W×C, what timm's first stage expects

    # CPU inference runs each stage's blocks on groups of images whose Mix-FFN hidden map
    # (tokens × 4C floats) is about this size: in cache, yet few groups (few thread barriers).
    cpu_chunk_bytes = 16 << 20

    def stage(self, i: int, x: Tensor) -> Tensor:
        """timm's stage forward without its final NCHW copy: returns a channels_last view.

        On CPU without autograd the blocks run on a few images at a time (every block op is
        per image, so the result is the same): the early stages' activations (67 MB for the
        stage-1 Mix-FFN hidden map of 16 images at 256²) then stay in cache and below glibc's
        mmap threshold, instead of being page-faulted in and streamed through DRAM each time.
        """
        st = self.stages[i]
        if st.downsample is not None:
            x = st.downsample(x)  # NCHW (any memory format) -> N×H×W×C
        n, h, w, c = x.shape
        x = x.reshape(n, h * w, c)
        group = max(1, self.cpu_chunk_bytes // (h * w * 4 * c * x.element_size()))
        if x.device.type == "cpu" and not torch.is_grad_enabled() and group < n:
            out = torch.empty_like(x)
            for start in range(0, n, group):
                y = x[start : start + group]
                for blk in st.blocks:
                    y = blk(y, (h, w))
                out[start : start + group] = y
            x = out
        else:
            for blk in st.blocks:
                x = blk(x, (h, w))
        return st.norm(x).view(n, h, w, c).permute(0, 3, 1, 2)


class ResNetEncoder(Encoder):
    """ResNet-18 encoder (the R18 rows of the evaluation): four stages of timm's resnet18."""

    def __init__(self, cfg: BackboneConfig, in_chans: int, sar_chans: int | None):
        super().__init__()
        kwargs = dict(stem_type="deep", stem_width=32, num_classes=0)
        net = timm.create_model("resnet18", pretrained=False, in_chans=in_chans, **kwargs)
        if cfg.pretrained:
            load_local_weights(net, cfg.pretrained)
        self.stem_layers = nn.Sequential(net.conv1, net.bn1, net.act1, net.maxpool)
        self.layers = nn.ModuleList([net.layer1, net.layer2, net.layer3, net.layer4])
        if sar_chans is not None:
            sar = timm.create_model("resnet18", pretrained=False, in_chans=sar_chans, **kwargs)
            if cfg.pretrained:
                load_local_weights(sar, cfg.pretrained)
            self.sar_stem = nn.Sequential(sar.conv1, sar.bn1, sar.act1, sar.maxpool)
        self.channels = (64, 128, 256, 512)

    def stem(self, x: Tensor, modality: str) -> Tensor:
        """conv1/bn/act/maxpool of the modality."""
        stem = (
            self.sar_stem if (modality == "sar" and self.sar_stem is not None) else self.stem_layers
        )
        return stem(x)

    def stage(self, i: int, x: Tensor) -> Tensor:
        """Run residual stage i on the previous stage's output; returns NCHW."""
        return self.layers[i](x)


class MobileNetV3Encoder(Encoder):
    """Output stride 8 (dilated) as in mmseg; three taps; the MoE runs on the taps afterwards."""

    moe_in_path = False

    def __init__(self, cfg: BackboneConfig, in_chans: int, sar_chans: int | None):
        super().__init__()
        timm_name = {
            "mobilenetv3_large": "mobilenetv3_large_100",
            "mobilenetv3_small": "mobilenetv3_small_100",
        }
        kwargs = dict(features_only=True, output_stride=8)
        net = timm.create_model(timm_name[cfg.name], pretrained=False, in_chans=in_chans, **kwargs)
        if cfg.pretrained:
            load_local_weights(net, cfg.pretrained)
        self.stem_layers = nn.Sequential(net.conv_stem, net.bn1, net.act1)
        flat = [blk for stage in net.blocks for blk in stage]
        taps = MBV3_TAPS[cfg.name]
        starts = (0, taps[0] + 1, taps[1] + 1)
        self.segments = nn.ModuleList(
            [nn.Sequential(*flat[a : b + 1]) for a, b in zip(starts, taps, strict=True)]
        )
        if sar_chans is not None:
            sar = timm.create_model(
                timm_name[cfg.name], pretrained=False, in_chans=sar_chans, **kwargs
            )
            if cfg.pretrained:
                load_local_weights(sar, cfg.pretrained)
            self.sar_stem = nn.Sequential(sar.conv_stem, sar.bn1, sar.act1)
        with torch.no_grad():
            probe = self.stem_layers(torch.zeros(1, in_chans, 64, 64))
            chans = []
            for seg in self.segments:
                probe = seg(probe)
                chans.append(probe.shape[1])
        self.channels = tuple(chans)

    def stem(self, x: Tensor, modality: str) -> Tensor:
        """The first conv block of the modality."""
        stem = (
            self.sar_stem if (modality == "sar" and self.sar_stem is not None) else self.stem_layers
        )
        return stem(x)

    def stage(self, i: int, x: Tensor) -> Tensor:
        """Run block group i on the previous stage's output; returns NCHW."""
        return self.segments[i](x)


def build_encoder(
    cfg: BackboneConfig, optical_channels: int, sar_channels: int, separate: bool
) -> Encoder:
    """The shared encoder; with ``separate`` the SAR input gets its own stem (native bands)."""
    sar = sar_channels if separate else None
    if cfg.name.startswith("mit_"):
        enc: Encoder = MiTEncoder(cfg, optical_channels, sar)
    elif cfg.name == "resnet18":
        enc = ResNetEncoder(cfg, optical_channels, sar)
    else:
        enc = MobileNetV3Encoder(cfg, optical_channels, sar)
    return enc


__all__ = ["Encoder", "build_encoder", "load_local_weights"]
