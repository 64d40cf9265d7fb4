"""Local pretrained weights (never downloaded) and the `m2cd bench model` command."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

import m2cd

TINY = dict(
    depths=(1, 1, 1, 1),
    embed_dims=(16, 32, 64, 128),
    num_heads=(1, 1, 2, 4),
    mlp_ratios=(4, 4, 4, 4),
)


def test_pretrained_encoder_weights_come_from_a_local_file(tmp_path):
    torch.manual_seed(0)
    timm_net = timm.create_model("pvt_v2_b1", pretrained=False, num_classes=1000, **TINY)
    path = tmp_path / "imagenet.safetensors"
    save_file({k: v.contiguous() for k, v in timm_net.state_dict().items()}, str(path))
    model = m2cd.build_model("tiny", **{"backbone.pretrained": str(path)})
    ours = model.encoder.stages[2].blocks[0].attn.q.weight
    assert torch.equal(ours, timm_net.stages[2].blocks[0].attn.q.weight)
    assert torch.equal(model.encoder.patch_embed.proj.weight, timm_net.patch_embed.proj.weight)

    wrong = tmp_path / "wrong.safetensors"
    save_file({"unrelated.weight": torch.zeros(3)}, str(wrong))
    with pytest.raises(ValueError, match="do not fit"):
        m2cd.build_model("tiny", **{"backbone.pretrained": str(wrong)})
    with pytest.raises(FileNotFoundError, match="not found"):
        m2cd.build_model("tiny", **{"backbone.pretrained": str(tmp_path / "missing.pth")})
