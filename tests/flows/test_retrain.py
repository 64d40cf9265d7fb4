"""retrain never promotes a model that maps worse than what detect-scene runs today."""

from __future__ import annotations

import json
from pathlib import Path

from flows.retrain import incumbent_model
from m2cd.pretrained import shipped_checkpoint
from pipeline.registry import Registry


def test_the_shipped_model_is_the_incumbent_until_something_is_promoted(tmp_path, tiny_checkpoint):
    shipped = shipped_checkpoint()
    reg = Registry(tmp_path / "registry")
    first = incumbent_model(reg)
    assert first.source == "shipped" and Path(first.checkpoint) == shipped
    assert first.digest == json.loads((shipped / "checkpoint.json").read_text())["digest"]

    record = reg.register(tiny_checkpoint, {"f1": 0.9})
    reg.promote(record.digest)
    then = incumbent_model(reg)
    assert then.source == "promoted" and then.digest == record.digest
    assert Path(then.checkpoint).is_dir()
