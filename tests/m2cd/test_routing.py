"""Routing diagnostics: observe the routers without changing the model's output."""

import numpy as np
import torch

import m2cd
from m2cd.routing import record_routing, routing_shares


def test_routing_is_recorded_per_stage_and_modality_without_changing_logits():
    torch.manual_seed(0)
    model = m2cd.build_model("tiny").eval()
    opt, sar = torch.randn(2, 3, 64, 64), torch.randn(2, model.config.bands.sar_channels, 64, 64)
    with torch.no_grad():
        plain = model(opt, sar)
        with record_routing(model) as records:
            observed = model(opt, sar)
        after = model(opt, sar)
    assert torch.equal(plain, observed) and torch.equal(plain, after)
    assert len(records) == sum(isinstance(m, m2cd.moe.MoE) for m in model.modules()) > 0
    for rec in records:
        sel = rec.selected[0]
        assert sel.shape[0] == 4 and (sel.sum(-1) == rec.top_k).all()  # k experts per token
    shares = routing_shares(records)
    for row in shares:
        assert np.isclose(sum(row["optical_share"]), 1, atol=1e-3)
        assert np.isclose(sum(row["sar_share"]), 1, atol=1e-3)
        assert 0 <= row["modality_tv_distance"] <= 1


def test_disjoint_routing_has_distance_one():
    from m2cd.routing import StageRouting

    sel = np.zeros((2, 1, 1, 4), bool)
    sel[0, ..., :2] = True  # optical -> experts 0, 1
    sel[1, ..., 2:] = True  # SAR -> experts 2, 3
    row = routing_shares([StageRouting(stage=0, top_k=2, selected=[sel])])[0]
    assert row["modality_tv_distance"] == 1.0
    assert row["sar_fraction_of_expert"] == [0.0, 0.0, 1.0, 1.0]
