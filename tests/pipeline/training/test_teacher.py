"""Distillation teachers (pipeline.training.teacher): outside the student's state, EMA moves,
a frozen checkpoint teacher stays in eval mode; the pure model constructor attaches none."""

from __future__ import annotations

import pytest
import torch

import m2cd
from pipeline.training.teacher import attach_teacher


def test_build_model_attaches_no_teacher_even_when_the_config_names_one(tmp_path):
    model = m2cd.build_model("tiny", **{"distill.teacher": str(tmp_path / "no_such_checkpoint")})
    assert model.teacher is None  # nothing read from disk by the constructor


def test_teacher_is_not_saved_and_ema_moves(tmp_path):
    torch.manual_seed(0)
    model = attach_teacher(
        m2cd.build_model("tiny", **{"distill.teacher": "ema", "distill.ema_decay": 0.5})
    ).train()
    assert model.teacher is not None
    assert not any(k.startswith("_teacher") for k in model.state_dict())
    opt, sar = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    logits, aux = model(opt, sar)
    expected = m2cd.losses.distill_kl(
        logits, model.teacher(opt, sar), model.config.distill.temperature
    )
    assert aux["distill"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert aux["distill"].item() > 0
    assert aux["distill"].requires_grad and model.teacher.net.training is False
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    before = next(model.teacher.net.parameters()).clone()
    model.update_teacher()
    assert not torch.equal(before, next(model.teacher.net.parameters()))
    m2cd.save_checkpoint(model, tmp_path / "student")
    teacher_cfg = {"distill.teacher": str(tmp_path / "student")}
    frozen = attach_teacher(m2cd.build_model("tiny", **teacher_cfg))
    assert frozen.teacher is not None and not frozen.teacher.net.training
