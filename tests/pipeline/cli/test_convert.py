"""`m2cd convert-checkpoint`: an official mmengine .pth becomes a loadable m2cd checkpoint."""

from __future__ import annotations

import json

import torch

import m2cd
from tests.m2cd.test_convert import official_state


def test_cli_converts_an_mmengine_pth(tmp_path):
    from flows.cli import main

    src = tmp_path / "best_mIoU_iter_185000.pth"
    torch.save(
        {"meta": {"iter": 185000, "mmengine_version": "0.10.4"}, "state_dict": official_state()},
        src,
    )
    dst = tmp_path / "converted"
    assert main(["convert-checkpoint", str(src), str(dst), "--o2sp"]) == 0
    model = m2cd.load_checkpoint(dst)
    assert (
        model.config.backbone.name == "mit_b1"
        and model.config.moe.enabled
        and model.config.o2sp.enabled
    )
    meta = json.loads((dst / "checkpoint.json").read_text())
    assert meta["provenance"]["converted_from"] == str(src)
    bad = tmp_path / "bad.pth"
    torch.save({"state_dict": {"backbone.something.weird": torch.zeros(1)}}, bad)
    assert main(["convert-checkpoint", str(bad), str(tmp_path / "x")]) == 2
