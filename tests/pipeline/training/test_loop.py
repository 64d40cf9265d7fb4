"""The training loop: loss goes down, resume is bit-exact, stages chain, checkpoints load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import m2cd
from pipeline.errors import InputError
from pipeline.training.config import OptimConfig, TrainConfig
from pipeline.training.data import LabelledArea
from pipeline.training.optim import lr_factor, param_groups
from pipeline.training.trainer import train


def _area(seed: int, size: int = 64) -> LabelledArea:
    """A learnable toy pair: change where SAR is dark and optical is bright."""
    rng = np.random.default_rng(seed)
    lab = np.zeros((size, size), np.uint8)
    lab[size // 4 : size // 2, size // 3 : 2 * size // 3] = 1
    opt = rng.normal(0, 0.3, (3, size, size)).astype(np.float32) + lab * 0.8
    sar = rng.normal(0, 0.3, (1, size, size)).astype(np.float32) - lab * 0.8
    return LabelledArea(opt, sar, lab, f"toy{seed}")


def _cfg(**extra) -> TrainConfig:
    base = {
        "data": {"folders": {"root": "unused"}, "tile": 32, "batch_size": 4, "val_tile": 32},
        "stages": [{"model": "tiny", "steps": 6}],
        "optim": {"lr": 2e-3, "head_lr_mult": 1.0, "warmup_steps": 2, "clip_grad_norm": 1.0},
        "loss": {"dice_weight": 1.0, "class_weights": "auto"},
        "augment": {
            "optical_brightness": 0.2,
            "optical_noise": 0.05,
            "sar_db_offset": 2,
            "sar_speckle_looks": 4,
        },
        "val_every": 3,
        "checkpoint_every": 3,
        "log_every": 1,
        "progress": False,
        "precision": "fp32",
    }
    base.update(extra)
    return TrainConfig.model_validate(base)


AREAS = ([_area(0)], [_area(1)])


@pytest.mark.slow
def test_a_few_steps_reduce_the_loss_and_write_loadable_checkpoints(tmp_path):
    cfg = _cfg(stages=[{"model": "tiny", "steps": 12}], val_every=6, checkpoint_every=6)
    result = train(cfg, tmp_path / "run", areas=AREAS)
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["seg_loss"] for r in records if "seg_loss" in r]
    assert len(losses) == 12
    assert np.mean(losses[-4:]) < 0.8 * np.mean(losses[:4])
    vals = [r["val"] for r in records if "val" in r]
    assert len(vals) == 2 and {"precision", "recall", "f1", "iou", "oa", "kappa"} <= set(vals[0])
    assert result.best_metrics["f1"] == max(v["f1"] for v in vals)
    for ckpt in (result.best, result.last):
        model = m2cd.load_checkpoint(ckpt)  # what `m2cd detect --checkpoint` loads
        assert model.config.name == "tiny"
    meta = json.loads((result.best / "checkpoint.json").read_text())
    assert meta["provenance"]["val_metrics"]["f1"] == result.best_metrics["f1"]


EMA = {"distill.teacher": "ema", "distill.ema_decay": 0.5}


@pytest.mark.slow
def test_resume_continues_bit_exactly_with_an_ema_teacher(tmp_path):
    # the EMA teacher lives outside the student's checkpoint; its state must travel in last/
    stage = {"model": "tiny", "model_overrides": EMA, "steps": 4}
    cfg = _cfg(stages=[stage], val_every=2, checkpoint_every=2)
    train(cfg, tmp_path / "straight", areas=AREAS)
    train(cfg, tmp_path / "split", areas=AREAS, max_steps=2)  # interrupted after its checkpoint
    state = json.loads((tmp_path / "split" / "last" / "train_state.json").read_text())
    assert state["step"] == 2
    with pytest.raises(InputError, match="--resume"):
        train(cfg, tmp_path / "split", areas=AREAS)
    train(cfg, tmp_path / "split", areas=AREAS, resume=True)
    a = load_file(str(tmp_path / "straight" / "last" / "weights.safetensors"))
    b = load_file(str(tmp_path / "split" / "last" / "weights.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    sa = load_file(str(tmp_path / "straight" / "last" / "train_state.safetensors"))
    sb = load_file(str(tmp_path / "split" / "last" / "train_state.safetensors"))
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)  # optimizer moments, RNG, teacher too
    teacher = {k[len("teacher.") :]: v for k, v in sa.items() if k.startswith("teacher.")}
    assert teacher.keys() == a.keys()  # the whole teacher network is saved ...
    assert any(not torch.equal(teacher[k], a[k]) for k in a)  # ... and it lags the student


def test_resume_refuses_a_state_without_the_ema_teacher(tmp_path):
    train(_cfg(stages=[{"model": "tiny", "steps": 2}]), tmp_path / "run", areas=AREAS, max_steps=1)
    ema = _cfg(stages=[{"model": "tiny", "model_overrides": EMA, "steps": 2}])
    with pytest.raises(InputError, match="train_state.safetensors.*EMA teacher"):
        train(ema, tmp_path / "run", areas=AREAS, resume=True)


def test_stage_two_starts_from_stage_one_best_with_o2sp(tmp_path):
    cfg = _cfg(
        stages=[
            {"name": "moe", "model": "tiny", "steps": 1},
            {
                "name": "o2sp",
                "model": "tiny",
                "model_overrides": {"o2sp.enabled": True},
                "steps": 1,
                "init": "previous",
            },
        ],
        val_every=1,
        checkpoint_every=1,
    )
    result = train(cfg, tmp_path / "run", areas=AREAS)
    assert (tmp_path / "run" / "stages" / "moe" / "best" / "checkpoint.json").is_file()
    assert m2cd.load_checkpoint(result.best).config.o2sp.enabled
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("o2sp_guide" in r for r in records if r["stage"] == "o2sp")


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.LayerNorm(4))
        self.decoder = nn.Sequential(nn.Conv2d(4, 2, 1), nn.GroupNorm(1, 2))


def test_param_groups_by_module_type_and_head():
    cfg = OptimConfig(lr=1e-4, head_lr_mult=10, weight_decay=0.01)
    toy = _Toy()
    groups = {g["name"]: g for g in param_groups(toy, cfg)}
    ids = {n: {id(p) for p in g["params"]} for n, g in groups.items()}
    # "layers.2" is a LayerNorm whose name has no "norm" in it: still no decay (by type)
    assert id(toy.layers[2].weight) in ids["body_no_decay"]
    assert id(toy.layers[1].bias) in ids["body_no_decay"]
    assert id(toy.layers[0].weight) in ids["body"]
    assert (
        id(toy.decoder[0].weight) in ids["head"]
        and id(toy.decoder[1].weight) in ids["head_no_decay"]
    )
    assert groups["head"]["lr"] == pytest.approx(1e-3) and groups["body"]["lr"] == pytest.approx(
        1e-4
    )
    assert groups["body_no_decay"]["weight_decay"] == 0 and groups["body"]["weight_decay"] == 0.01


def test_warmup_then_poly():
    cfg = OptimConfig(warmup_steps=10, warmup_factor=1e-6, poly_power=1.0)
    assert lr_factor(0, 100, cfg) == pytest.approx(1e-6)
    assert lr_factor(5, 100, cfg) == pytest.approx((1e-6 + (1 - 1e-6) * 0.5) * 0.95)
    assert lr_factor(10, 100, cfg) == pytest.approx(0.9)
    assert lr_factor(100, 100, cfg) == 0.0
