"""Checkpoints: safetensors + JSON, digest verified, never unpickled."""

from __future__ import annotations

import json

import pytest
import torch

import m2cd
from m2cd.checkpoint import CheckpointError


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    model = m2cd.build_model("tiny").eval()
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    digest = m2cd.save_checkpoint(model, path, provenance={"note": "test"})
    return model, path, digest


def test_round_trip_gives_identical_logits(saved):
    model, path, digest = saved
    loaded = m2cd.load_checkpoint(path)
    assert not loaded.training
    assert loaded.config == model.config
    opt, sar = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(opt, sar), model(opt, sar))
    assert m2cd.checkpoint_digest(path) == digest
    meta = json.loads((path / "checkpoint.json").read_text())
    assert meta["format"] == "m2cd-checkpoint/1"
    assert meta["digest"] == digest and digest.startswith("sha256:")
    assert meta["provenance"]["note"] == "test"
    assert sorted(p.name for p in path.iterdir()) == ["checkpoint.json", "weights.safetensors"]


def _copy(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_tampered_weights_are_refused(saved, tmp_path):
    _, path, _ = saved
    bad = _copy(path, tmp_path / "bad")
    data = bytearray((bad / "weights.safetensors").read_bytes())
    data[-10] ^= 0xFF
    (bad / "weights.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="digest mismatch") as err:
        m2cd.load_checkpoint(bad)
    assert str(bad) in str(err.value)


def test_truncated_weights_are_refused(saved, tmp_path):
    _, path, _ = saved
    bad = _copy(path, tmp_path / "short")
    data = (bad / "weights.safetensors").read_bytes()
    (bad / "weights.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="digest mismatch"):
        m2cd.load_checkpoint(bad)


def test_missing_or_foreign_checkpoints_are_refused(saved, tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint.json missing"):
        m2cd.load_checkpoint(tmp_path)
    _, path, _ = saved
    bad = _copy(path, tmp_path / "fmt")
    meta = json.loads((bad / "checkpoint.json").read_text())
    meta["format"] = "pickle"
    (bad / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="unknown format"):
        m2cd.load_checkpoint(bad)


def test_weights_not_matching_the_config_are_refused(saved, tmp_path):
    _, path, _ = saved
    bad = _copy(path, tmp_path / "cfg")
    meta = json.loads((bad / "checkpoint.json").read_text())
    meta["model"]["moe"]["enabled"] = False
    (bad / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="do not fit"):
        m2cd.load_checkpoint(bad)
