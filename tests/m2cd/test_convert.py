"""convert-checkpoint: an official-format MiT-b1 MoE state dict → our model, same logits.

The official state dict is generated here from the mmseg/open-cd module definitions (key names and
shapes written out by hand from circleLZY/M2CD mit_moe.py, mmseg MixVisionTransformer and
SegformerHead), NOT from our model, and the reference logits come from an independent functional
re-implementation of the official forward (nn.MultiheadAttention, conv Mix-FFN, per-expert sparse
MoE loop, resize-concatenate-fuse decoder).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import m2cd
from m2cd.convert import convert_state_dict, infer_config

WIDTHS, HEADS, SR, K = (64, 128, 320, 512), (1, 2, 5, 8), (8, 4, 2, 1), (7, 3, 3, 3)


def official_state(moe: bool = True, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.05):
        return torch.randn(*shape, generator=g) * scale

    sd: dict[str, torch.Tensor] = {}
    cin = 3
    for i, (c, k, sr) in enumerate(zip(WIDTHS, K, SR, strict=True)):
        p = f"backbone.layers.{i}"
        sd[f"{p}.0.projection.weight"] = r(c, cin, k, k, scale=0.1)
        sd[f"{p}.0.projection.bias"] = r(c)
        sd[f"{p}.0.norm.weight"], sd[f"{p}.0.norm.bias"] = 1 + r(c), r(c)
        for j in range(2):
            b = f"{p}.1.{j}"
            for n in ("norm1", "norm2"):
                sd[f"{b}.{n}.weight"], sd[f"{b}.{n}.bias"] = 1 + r(c), r(c)
            sd[f"{b}.attn.attn.in_proj_weight"] = r(3 * c, c, scale=1 / math.sqrt(c))
            sd[f"{b}.attn.attn.in_proj_bias"] = r(3 * c)
            sd[f"{b}.attn.attn.out_proj.weight"] = r(c, c, scale=1 / math.sqrt(c))
            sd[f"{b}.attn.attn.out_proj.bias"] = r(c)
            if sr > 1:
                sd[f"{b}.attn.sr.weight"] = r(c, c, sr, sr, scale=1 / (sr * math.sqrt(c)))
                sd[f"{b}.attn.sr.bias"] = r(c)
                sd[f"{b}.attn.norm.weight"], sd[f"{b}.attn.norm.bias"] = 1 + r(c), r(c)
            sd[f"{b}.ffn.layers.0.weight"] = r(4 * c, c, 1, 1, scale=1 / math.sqrt(c))
            sd[f"{b}.ffn.layers.0.bias"] = r(4 * c)
            sd[f"{b}.ffn.layers.1.weight"] = r(4 * c, 1, 3, 3, scale=0.2)
            sd[f"{b}.ffn.layers.1.bias"] = r(4 * c)
            sd[f"{b}.ffn.layers.4.weight"] = r(c, 4 * c, 1, 1, scale=1 / math.sqrt(4 * c))
            sd[f"{b}.ffn.layers.4.bias"] = r(c)
        sd[f"{p}.2.weight"], sd[f"{p}.2.bias"] = 1 + r(c), r(c)
        if moe:
            q, pdim = f"backbone.ccs.{i}", min(c // 2, 256)
            for e in range(4):
                sd[f"{q}.experts.{e}.pointwise_conv1.weight"] = r(4 * c, c, scale=1 / math.sqrt(c))
                sd[f"{q}.experts.{e}.pointwise_conv1.bias"] = r(4 * c)
                sd[f"{q}.experts.{e}.pointwise_conv2.weight"] = r(
                    c, 4 * c, scale=1 / math.sqrt(4 * c)
                )
                sd[f"{q}.experts.{e}.pointwise_conv2.bias"] = r(c)
            sd[f"{q}.w_gate.temperature"] = torch.tensor([math.log(2.0)])
            sd[f"{q}.w_gate.cosine_projector.weight"] = r(pdim, c, scale=1 / math.sqrt(c))
            sd[f"{q}.w_gate.cosine_projector.bias"] = r(pdim)
            sd[f"{q}.w_gate.sim_matrix"] = r(pdim, 4, scale=1.0)
            sd[f"{q}.w_noise"] = torch.zeros(c, 4)
            sd[f"{q}.mean"], sd[f"{q}.std"] = torch.tensor([0.0]), torch.tensor([1.0])
        cin = c

    def bn(prefix, c):
        sd[f"{prefix}.weight"], sd[f"{prefix}.bias"] = 1 + r(c), r(c)
        sd[f"{prefix}.running_mean"], sd[f"{prefix}.running_var"] = r(c), 1 + r(c).abs()
        sd[f"{prefix}.num_batches_tracked"] = torch.tensor(100)

    for i, c in enumerate(WIDTHS):
        sd[f"decode_head.convs.{i}.conv.weight"] = r(256, 2 * c, 1, 1, scale=1 / math.sqrt(2 * c))
        bn(f"decode_head.convs.{i}.bn", 256)
    sd["decode_head.fusion_conv.conv.weight"] = r(256, 1024, 1, 1, scale=1 / 32)
    bn("decode_head.fusion_conv.bn", 256)
    sd["decode_head.conv_seg.weight"], sd["decode_head.conv_seg.bias"] = r(2, 256, 1, 1), r(2)
    return sd


def _ln(x, sd, p):
    return F.layer_norm(x, x.shape[-1:], sd[f"{p}.weight"], sd[f"{p}.bias"], eps=1e-6)


def _official_moe(x, sd, q):
    """MoE_layer eval: clean cosine logits, top-2 softmax, per-expert sparse dispatch."""
    n, c, h, w = x.shape
    t = x.permute(0, 2, 3, 1).reshape(-1, c)
    proj = F.linear(
        t, sd[f"{q}.w_gate.cosine_projector.weight"], sd[f"{q}.w_gate.cosine_projector.bias"]
    )
    logits = F.normalize(proj, dim=1) @ F.normalize(sd[f"{q}.w_gate.sim_matrix"], dim=0)
    logits = logits * torch.clamp(sd[f"{q}.w_gate.temperature"], max=math.log(100)).exp()
    top, idx = logits.topk(3, dim=-1)
    gates = torch.zeros_like(logits).scatter(-1, idx[:, :2], torch.softmax(top[:, :2], -1))
    y = torch.zeros_like(t)
    for e in range(4):
        rows = torch.nonzero(gates[:, e] > 0).flatten()
        hdn = F.gelu(
            F.linear(
                t[rows],
                sd[f"{q}.experts.{e}.pointwise_conv1.weight"],
                sd[f"{q}.experts.{e}.pointwise_conv1.bias"],
            )
        )
        out = F.linear(
            hdn,
            sd[f"{q}.experts.{e}.pointwise_conv2.weight"],
            sd[f"{q}.experts.{e}.pointwise_conv2.bias"],
        )
        y.index_add_(0, rows, out * gates[rows, e : e + 1])
    return y.view(n, h, w, c).permute(0, 3, 1, 2)


def _official_branch(x, sd, moe):
    feats = []
    for i, (c, k, sr, heads) in enumerate(zip(WIDTHS, K, SR, HEADS, strict=True)):
        p = f"backbone.layers.{i}"
        x = F.conv2d(
            x,
            sd[f"{p}.0.projection.weight"],
            sd[f"{p}.0.projection.bias"],
            stride=4 if i == 0 else 2,
            padding=k // 2,
        )
        n, _, h, w = x.shape
        x = _ln(x.flatten(2).transpose(1, 2), sd, f"{p}.0.norm")
        for j in range(2):
            b = f"{p}.1.{j}"
            y = _ln(x, sd, f"{b}.norm1")
            kv = y
            if sr > 1:
                kv = y.transpose(1, 2).reshape(n, c, h, w)
                kv = F.conv2d(kv, sd[f"{b}.attn.sr.weight"], sd[f"{b}.attn.sr.bias"], stride=sr)
                kv = _ln(kv.flatten(2).transpose(1, 2), sd, f"{b}.attn.norm")
            mha = torch.nn.MultiheadAttention(c, heads, batch_first=True)
            mha.load_state_dict(
                {
                    "in_proj_weight": sd[f"{b}.attn.attn.in_proj_weight"],
                    "in_proj_bias": sd[f"{b}.attn.attn.in_proj_bias"],
                    "out_proj.weight": sd[f"{b}.attn.attn.out_proj.weight"],
                    "out_proj.bias": sd[f"{b}.attn.attn.out_proj.bias"],
                }
            )
            x = x + mha.eval()(y, kv, kv, need_weights=False)[0]
            y = _ln(x, sd, f"{b}.norm2").transpose(1, 2).reshape(n, c, h, w)
            y = F.conv2d(y, sd[f"{b}.ffn.layers.0.weight"], sd[f"{b}.ffn.layers.0.bias"])
            y = F.conv2d(
                y,
                sd[f"{b}.ffn.layers.1.weight"],
                sd[f"{b}.ffn.layers.1.bias"],
                padding=1,
                groups=4 * c,
            )
            y = F.conv2d(F.gelu(y), sd[f"{b}.ffn.layers.4.weight"], sd[f"{b}.ffn.layers.4.bias"])
            x = x + y.flatten(2).transpose(1, 2)
        x = _ln(x, sd, f"{p}.2").transpose(1, 2).reshape(n, c, h, w)
        if moe:
            x = _official_moe(x, sd, f"backbone.ccs.{i}")
        feats.append(x)
    return feats


def _conv_bn_relu(x, sd, p):
    x = F.conv2d(x, sd[f"{p}.conv.weight"])
    x = F.batch_norm(
        x,
        sd[f"{p}.bn.running_mean"],
        sd[f"{p}.bn.running_var"],
        sd[f"{p}.bn.weight"],
        sd[f"{p}.bn.bias"],
        eps=1e-5,
    )
    return F.relu(x)


def official_forward(sd, optical, sar, moe=True):
    fa, fb = _official_branch(optical, sd, moe), _official_branch(sar, sd, moe)
    h, w = optical.shape[-2:]
    outs = [
        F.interpolate(
            _conv_bn_relu(torch.cat([a, b], 1), sd, f"decode_head.convs.{i}"),
            size=(h // 2, w // 2),
            mode="bilinear",
            align_corners=False,
        )
        for i, (a, b) in enumerate(zip(fa, fb, strict=True))
    ]
    x = _conv_bn_relu(torch.cat(outs, 1), sd, "decode_head.fusion_conv")
    x = F.conv2d(x, sd["decode_head.conv_seg.weight"], sd["decode_head.conv_seg.bias"])
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)


def test_official_key_shapes_match_the_spec_parameter_count():
    sd = official_state()
    params = sum(
        v.numel()
        for k, v in sd.items()
        if not k.endswith(("running_mean", "running_var", "num_batches_tracked", ".mean", ".std"))
    )
    assert abs(params / 1e6 - 26.48) < 0.01 * 26.48


@pytest.mark.parametrize("moe", [True, False])
def test_converted_model_reproduces_official_logits(moe):
    sd = official_state(moe=moe)
    cfg = infer_config(sd)
    assert cfg == {"backbone": {"name": "mit_b1"}, "moe": {"enabled": moe}}
    model = m2cd.build_model(cfg)
    model.load_state_dict(convert_state_dict(sd), strict=True)
    model.eval()
    g = torch.Generator().manual_seed(1)
    optical, sar = torch.randn(1, 3, 64, 96, generator=g), torch.randn(1, 3, 64, 96, generator=g)
    with torch.no_grad():
        ours = model(optical, sar)
        ref = official_forward(sd, optical, sar, moe=moe)
    assert ours.shape == ref.shape == (1, 2, 64, 96)
    assert torch.allclose(ours, ref, atol=2e-4, rtol=1e-4), (ours - ref).abs().max()
