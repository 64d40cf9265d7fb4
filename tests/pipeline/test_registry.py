"""Model registry: register by digest, promote, resolve, on local disk and on S3 (seaweedfs)."""

from __future__ import annotations

import json

import pytest

from pipeline.errors import InputError
from pipeline.registry import Registry, beats, digest_hex


def test_register_promote_resolve_local(tmp_path, tiny_checkpoint):
    import m2cd

    reg = Registry(tmp_path / "reg")
    assert reg.promoted() is None and reg.list() == []
    with pytest.raises(InputError, match="promoted.json: no model has been promoted"):
        reg.resolve("promoted")
    rec = reg.register(tiny_checkpoint, {"f1": 0.5}, validation="val-a", config={"seed": 0})
    assert rec.digest == m2cd.checkpoint_digest(tiny_checkpoint)
    folder = tmp_path / "reg" / "models" / digest_hex(rec.digest)
    assert json.loads((folder / "metrics.json").read_text())["metrics"] == {"f1": 0.5}
    assert (folder / "checkpoint" / "weights.safetensors").is_file()
    again = reg.register(tiny_checkpoint, {"f1": 0.5})  # same weights: same entry
    assert [r.digest for r in reg.list()] == [again.digest]
    promotion = reg.promote(rec.digest, reason="first")
    assert promotion.previous is None and reg.promoted().digest == rec.digest
    path = reg.resolve("promoted")
    assert m2cd.checkpoint_digest(path) == rec.digest
    with pytest.raises(InputError, match="model not registered"):
        reg.get("sha256:" + "0" * 64)


def test_promotion_rule_needs_a_strict_win():
    assert beats({"f1": 0.6}, None)
    assert beats({"f1": 0.6}, {"f1": 0.5})
    assert not beats({"f1": 0.5}, {"f1": 0.5})
    assert not beats({"f1": 0.4}, {"f1": 0.5})
    with pytest.raises(InputError, match="missing 'f1'"):
        beats({"iou": 0.9}, {"f1": 0.5})


@pytest.mark.s3
def test_registry_on_s3_round_trip(s3_env, tmp_path, tiny_checkpoint):
    import m2cd

    bucket = s3_env.bucket()
    reg = Registry(f"s3://{bucket}/registry")
    rec = reg.register(tiny_checkpoint, {"f1": 0.7})
    reg.promote(rec.digest)
    assert rec.uri == f"s3://{bucket}/registry/models/{digest_hex(rec.digest)}/checkpoint"
    fresh = Registry(f"s3://{bucket}/registry")  # another process sees the same state
    assert fresh.promoted().digest == rec.digest
    local = fresh.resolve("promoted", cache_dir=tmp_path / "cache")
    assert m2cd.checkpoint_digest(local) == rec.digest
    assert m2cd.load_checkpoint(local) is not None
