"""The CPU inference paths (chunked MoE, image-grouped encoder stages, BN-folded decoder) compute
the same logits as the autograd paths and as the official order, to float rounding."""

from __future__ import annotations

import torch

import m2cd
from m2cd.decoder import MLPDecoder
from m2cd.model import reference_order
from m2cd.moe import MoE


def test_chunked_moe_equals_dense_and_sparse_reference():
    torch.manual_seed(0)
    moe = MoE(16).eval()
    moe.cpu_chunk_bytes = 7 * 4 * 64 * 4  # 7 tokens (4 experts × 64 hidden floats): 90 = 12·7 + 6
    moe.cpu_chunk_min_rows = 1
    x = torch.randn(2, 16, 5, 9)
    tokens = x.permute(0, 2, 3, 1).reshape(-1, 16)
    gates, _ = moe.gating(tokens)
    with torch.no_grad():
        chunked, _ = moe(x)
        dense = moe.experts_forward(tokens, gates)
        sparse = moe.experts_reference(tokens, gates)
    flat = chunked.permute(0, 2, 3, 1).reshape(-1, 16)
    assert torch.allclose(flat, dense, atol=1e-5)
    assert torch.allclose(flat, sparse, atol=1e-5)
    with torch.enable_grad():  # with autograd the dense path runs: same values
        y, _ = moe(x)
    assert torch.allclose(y, chunked, atol=1e-5)


def test_training_moe_path_gives_the_reference_values_and_gradients():
    """The autograd path (two flat GEMMs) against the sparse per-expert order, forward and backward
    (through the router too: only the selected gates carry gradient in either)."""
    torch.manual_seed(0)
    moe = MoE(16, noisy_gating=False).train()
    tokens = torch.randn(90, 16, requires_grad=True)
    results = []
    for fn in (moe.experts_forward_flat, moe.experts_reference):
        moe.zero_grad()
        tokens.grad = None
        gates, _ = moe.gating(tokens)
        out = fn(tokens, gates)
        (out * torch.linspace(-1, 1, 16)).sum().backward()
        results.append(
            [out.detach(), tokens.grad.clone()]
            + [p.grad.clone() for p in moe.parameters() if p.grad is not None]
        )
    flat, ref = results
    assert len(flat) == len(ref) > 5
    for a, b in zip(flat, ref, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_training_decoder_gives_the_official_values_and_gradients():
    """The GEMM resize-and-sum of the training decoder against resize-concatenate-fuse, in train
    mode (batch statistics), forward and backward; sizes that are not powers of two included."""
    torch.manual_seed(0)
    dec = MLPDecoder((8, 16, 32, 64), channels=24).train()
    sizes = ((15, 17), (8, 9), (4, 5), (2, 3))
    feats = [
        torch.randn(2, c, h, w, requires_grad=True)
        for c, (h, w) in zip((8, 16, 32, 64), sizes, strict=True)
    ]
    weight = torch.randn(2, 2, 30, 34, generator=torch.Generator().manual_seed(1))
    results = []
    for fn in (dec.forward_folded, dec.forward_reference):
        dec.zero_grad()
        for f in feats:
            f.grad = None
        out = fn(feats, (30, 34))
        (out * weight).sum().backward()
        results.append(
            [out.detach()]
            + [f.grad.clone() for f in feats]
            + [p.grad.clone() for p in dec.parameters()]
        )
    for a, b in zip(*results, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)


def test_inference_decoder_folds_batchnorm_exactly():
    torch.manual_seed(0)
    dec = MLPDecoder((8, 16, 32, 64), channels=24).eval()
    for bn in (m.bn for m in [*dec.convs, dec.fusion_conv]):  # non-trivial eval statistics
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.5, 0.5)
    dec.cpu_chunk_bytes = 1  # one sample per group: 3 groups
    feats = [torch.randn(3, c, s, s) for c, s in zip((8, 16, 32, 64), (16, 8, 4, 2), strict=True)]
    with torch.no_grad():
        fast = dec(feats, (32, 32))
        ref = dec.forward_reference(feats, (32, 32))
    assert torch.allclose(fast, ref, atol=1e-5)


def test_image_grouped_stages_and_reference_order_match_the_full_batch_forward():
    torch.manual_seed(0)
    model = m2cd.build_model("tiny").eval()
    g = torch.Generator().manual_seed(1)
    opt, sar = torch.randn(2, 3, 64, 64, generator=g), torch.randn(2, 3, 64, 64, generator=g)
    with torch.no_grad():
        model.encoder.cpu_chunk_bytes = 1  # every stage one image at a time
        grouped = model(opt, sar)
        model.encoder.cpu_chunk_bytes = 1 << 40
        whole = model(opt, sar)
        with reference_order(model):
            official = model(opt, sar)
    assert torch.allclose(grouped, whole, atol=1e-5)
    assert torch.allclose(official, whole, atol=1e-5)
    assert not any(getattr(m, "reference", False) for m in model.modules())
