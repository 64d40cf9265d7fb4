"""`m2cd labels push` refuses what retraining could not use, with the file and the problem named."""

from __future__ import annotations

import pytest

from flows.cli import main


@pytest.fixture
def no_api(monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)


def test_push_without_a_server_says_how_to_get_one(tmp_path, no_api, capsys):
    spec = tmp_path / "labels.yaml"
    spec.write_text("data: {scenes: []}\n")
    assert main(["labels", "push", str(spec)]) == 2
    assert "PREFECT_API_URL is not set" in capsys.readouterr().err


def test_push_validates_the_spec(tmp_path):
    from flows.labels import validate_spec
    from pipeline.errors import ConfigError, InputError

    with pytest.raises(InputError, match="missing.yaml: training data spec not found"):
        validate_spec(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("scenes: []\n")
    with pytest.raises(InputError, match="bad.yaml: a training data spec needs"):
        validate_spec(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("data: {scenes: []}\n")
    with pytest.raises(ConfigError, match=r"(?s)empty.yaml.*data needs scenes or folders"):
        validate_spec(empty)
