"""ModelConfig resolution and the MoE layer's routing, balance loss and dense dispatch."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

import m2cd
from m2cd.decoder import MLPDecoder
from m2cd.moe import MoE


def test_config_sources_and_overrides(tmp_path):
    cfg = m2cd.load_model_config("m2cd_mit_b0", **{"moe.top_k": 1})
    assert cfg.backbone.name == "mit_b0" and cfg.moe.top_k == 1 and cfg.name == "m2cd_mit_b0"
    path = tmp_path / "mine.yaml"
    path.write_text("backbone: {name: resnet18}\nmoe: {enabled: false}\n")
    assert m2cd.load_model_config(path).backbone.name == "resnet18"
    assert m2cd.load_model_config(cfg.model_dump()) == cfg
    assert m2cd.load_model_config(cfg) == cfg
    with pytest.raises(ValidationError, match="typo"):
        m2cd.load_model_config({"moe": {"typo": 1}})
    with pytest.raises(ValueError, match="unknown model config"):
        m2cd.load_model_config("no_such_model")
    with pytest.raises(ValidationError, match="separate_stems"):
        m2cd.load_model_config({"bands": {"optical_channels": 4}})


def _routed_moe(noisy: bool) -> MoE:
    """C=8, router projection = first 4 coordinates, expert embeddings = unit vectors, scale 100."""
    torch.manual_seed(0)
    moe = MoE(8, experts=4, top_k=2, noisy_gating=noisy)
    with torch.no_grad():
        moe.router.cosine_projector.weight.copy_(torch.eye(4, 8))
        moe.router.cosine_projector.bias.zero_()
        moe.router.sim_matrix.copy_(torch.eye(4))
        moe.router.temperature.fill_(math.log(100.0))
    return moe.train()


def _tokens(groups: list[int], per_group=64) -> torch.Tensor:
    rows = []
    for j in groups:
        v = torch.zeros(8)
        v[j], v[(j + 1) % 4] = 1.0, 0.5
        rows.append(v.expand(per_group, 8))
    return torch.cat(rows).view(len(groups) * per_group, 8, 1, 1)  # N×C×1×1


@pytest.mark.parametrize("noisy", [False, True])
def test_balance_loss_near_zero_uniform_and_positive_collapsed(noisy):
    moe = _routed_moe(noisy)
    _, uniform = moe(_tokens([0, 1, 2, 3]))
    _, collapsed = moe(_tokens([0, 0, 0, 0]))
    assert uniform.item() < 1e-3
    # all tokens on experts 0 and 1: CV²(importance) is about 4/3 (spec §4), times 0.01
    assert collapsed.item() > 0.02


def test_dense_dispatch_equals_per_expert_sparse_sum():
    torch.manual_seed(0)
    moe = MoE(16).eval()
    x = torch.randn(2, 16, 5, 7)
    y, loss = moe(x)
    assert loss is None
    tokens = x.permute(0, 2, 3, 1).reshape(-1, 16)
    gates, _ = moe.gating(tokens)
    assert ((gates > 0).sum(1) == 2).all()
    ref = torch.zeros_like(tokens)
    for e in range(4):
        sel = gates[:, e] > 0
        h = torch.nn.functional.gelu(tokens[sel] @ moe.fc1_weight[e].T + moe.fc1_bias[e])
        ref[sel] += gates[sel, e : e + 1] * (h @ moe.fc2_weight[e].T + moe.fc2_bias[e])
    assert torch.allclose(y.permute(0, 2, 3, 1).reshape(-1, 16), ref, atol=1e-5)


def test_moe_parameter_count_matches_spec_formula():
    c, p = 320, 160
    moe = MoE(c)
    assert (
        sum(q.numel() for q in moe.parameters())
        == 4 * (8 * c * c + 5 * c) + (c * p + p + p * 4 + 1) + 4 * c
    )


def test_folded_decoder_equals_official_order():
    torch.manual_seed(0)
    dec = MLPDecoder((8, 16, 32, 64), channels=24).eval()
    feats = [torch.randn(2, c, s, s) for c, s in zip((8, 16, 32, 64), (16, 8, 4, 2), strict=True)]
    assert torch.allclose(dec(feats, (32, 32)), dec.forward_reference(feats, (32, 32)), atol=1e-5)
