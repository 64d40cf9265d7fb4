"""Loading checkpoints and configs never executes code; tampered or truncated weights are refused
by their digest; a config error names the field and the allowed values (issue 5, item 4)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

import m2cd
from flows.cli import main
from m2cd.checkpoint import CheckpointError
from tests.reliability.support import SMALL_FLAGS, published, write_pair


class Payload:
    """Unpickling this creates a directory: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ck") / "tiny"
    m2cd.save_checkpoint(m2cd.build_model("tiny"), path)
    return path


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return write_pair(tmp_path_factory.mktemp("pair"))


def _variant(checkpoint: Path, dest: Path) -> Path:
    shutil.copytree(checkpoint, dest)
    return dest


def _rerecord_digest(path: Path) -> None:
    """What an attacker who can write the directory would do: make the digest match again."""
    meta = json.loads((path / "checkpoint.json").read_text())
    meta["digest"] = m2cd.checkpoint_digest(path)
    (path / "checkpoint.json").write_text(json.dumps(meta))


def _detect(pair, ck: Path, out: Path) -> list[str]:
    return ["detect", pair.optical, pair.sar, "--out", str(out), "--checkpoint", str(ck),
            "--no-progress", "--device", "cpu", *SMALL_FLAGS]  # fmt: skip


def _refused(capsys, args: list[str], *needles: str) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: ")
    for needle in needles:
        assert needle in err, err


def test_a_pickle_planted_as_weights_is_refused_without_running(checkpoint, pair, tmp_path, capsys):
    marker = tmp_path / "PWNED"
    evil = _variant(checkpoint, tmp_path / "evil")
    (evil / "weights.safetensors").write_bytes(pickle.dumps({"state_dict": Payload(marker)}))
    _rerecord_digest(evil)  # the digest alone cannot catch this one
    with pytest.raises(CheckpointError, match="safetensors"):
        m2cd.load_checkpoint(evil)
    out = tmp_path / "out"
    _refused(
        capsys, _detect(pair, evil, out), str(evil / "weights.safetensors"), "not a safetensors"
    )
    assert not marker.exists()
    assert not out.exists()  # refused at plan time, before staging
    # a torch .pth beside a missing safetensors file is never looked at
    pth = _variant(checkpoint, tmp_path / "pth")
    (pth / "weights.safetensors").unlink()
    torch.save({"state_dict": Payload(marker)}, pth / "model.pth")
    with pytest.raises(CheckpointError, match="weights.safetensors missing"):
        m2cd.load_checkpoint(pth)
    _refused(capsys, _detect(pair, pth, out), str(pth), "weights.safetensors missing")
    assert not marker.exists()


def _flip_one_bit(path: Path) -> None:
    weights = path / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) - 17] ^= 0x01  # inside a tensor: still a valid safetensors file
    weights.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    weights = path / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4096])


@pytest.mark.parametrize("damage", [_flip_one_bit, _truncate], ids=["tampered", "truncated"])
def test_damaged_weights_are_refused_by_their_digest(checkpoint, pair, tmp_path, capsys, damage):
    bad = _variant(checkpoint, tmp_path / "bad")
    damage(bad)
    with pytest.raises(CheckpointError, match="digest mismatch"):
        m2cd.load_checkpoint(bad)
    out = tmp_path / "out"
    _refused(capsys, _detect(pair, bad, out), str(bad / "weights.safetensors"), "digest mismatch")
    assert not out.exists()


def test_the_intact_checkpoint_runs(checkpoint, pair, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_detect(pair, checkpoint, out)) == 0, capsys.readouterr().err
    assert "item.json" in published(out)
    item = json.loads((out / "item.json").read_text())
    assert m2cd.checkpoint_digest(checkpoint) in json.dumps(item)


def test_checkpoint_metadata_is_json_only(checkpoint, pair, tmp_path, capsys):
    bad = _variant(checkpoint, tmp_path / "meta")
    (bad / "checkpoint.json").write_text("!!python/object/apply:os.mkdir ['x']")
    _refused(
        capsys, _detect(pair, bad, tmp_path / "out"), str(bad / "checkpoint.json"), "not valid JSON"
    )


@pytest.mark.parametrize(
    ("override", "needles"),
    [
        ("inference.device=tpu", ("inference.device", "'auto', 'cpu' or 'cuda'", "tpu")),
        (
            "grid.resampling=lanczos",
            ("grid.resampling", "'nearest', 'bilinear', 'cubic' or 'average'"),
        ),
        ("tiling.tilesize=512", ("tiling.tilesize", "allowed keys: tile, overlap, block")),
        ("tilling.tile=512", ("tilling", "allowed keys: optical, sar, grid, tiling")),
        ("tiling.overlap=300", ("tiling", "overlap (300) must be smaller than tile")),
        ("products.threshold=1.5", ("products.threshold", "less than 1")),
        ("inference.prefetch=-1", ("inference.prefetch", "'auto' or an integer ≥ 0")),
        ("inference.forwards=0", ("inference.forwards", "'auto' or an integer ≥ 1")),
        ("sar.units=decibel", ("sar.units", "'auto', 'linear', 'amplitude' or 'db'")),
    ],
)
def test_config_errors_name_the_field_and_the_allowed_values(
    pair, tmp_path, capsys, override, needles
):
    args = ["detect", pair.optical, pair.sar, "--out", str(tmp_path / "out"), "--model", "tiny"]
    _refused(capsys, [*args, "--set", override], "invalid config", *needles)
    assert not (tmp_path / "out").exists()


def test_yaml_configs_never_construct_python_objects(pair, tmp_path, capsys):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.yaml"
    evil.write_text(f"tiling: !!python/object/apply:os.mkdir ['{marker}']\n")
    args = ["detect", pair.optical, pair.sar, "--out", str(tmp_path / "out"), "--model", "tiny"]
    _refused(capsys, [*args, "--config", str(evil)], str(evil), "not valid YAML")
    from pipeline.catalog import load_region
    from pipeline.errors import ConfigError

    region = tmp_path / "region.yaml"
    region.write_text(f"source: !!python/object/apply:os.mkdir ['{marker}']\noutput: x\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_region(region)
    region.write_text("name: ../../etc\nsource: {uri: /data}\noutput: /out\n")
    with pytest.raises(ConfigError, match="name"):
        load_region(region)
    assert not marker.exists()
