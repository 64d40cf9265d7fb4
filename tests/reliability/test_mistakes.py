"""Ordinary mistakes exit 2 with one line naming the file or field, before any staging is written
(issue 15 point 6), and settings that cost a multiple of the time warn (point 9).

Most cases call `flows.cli.main` in-process (the console script's entry point: a subprocess costs
~20 s of imports per case on the shared 2 cores); the read-only output runs the real console
script, inside a private mount namespace where the output directory is a read-only bind mount
(the tests run as root, for whom permission bits do not stop a write).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from flows.cli import main
from tests.reliability.support import (
    cli_env,
    detect_args,
    one_error_line,
    run_cli,
    run_main,
    write_pair,
)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return write_pair(tmp_path_factory.mktemp("pair"), 64, 64)


def _main(capsys, args: list[str]) -> tuple[int, str]:
    rc, _, err = run_main(capsys, args)
    return rc, err


def test_an_output_that_is_an_existing_file_is_refused_and_left_alone(pair, tmp_path, capsys):
    out = tmp_path / "products"
    out.write_text("my notes")
    rc, err = _main(capsys, detect_args(pair, out))
    one_error_line(rc, err, str(out), "exists and is not a directory")
    assert out.read_text() == "my notes"


def test_an_output_under_a_file_names_the_file(pair, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    rc, err = _main(capsys, detect_args(pair, tmp_path / "file" / "out"))
    one_error_line(rc, err, str(tmp_path / "file" / "out"), f"{tmp_path / 'file'} is a file")


def test_a_dangling_symlink_as_output_is_refused_without_creating_its_target(
    pair, tmp_path, capsys
):
    os.symlink(tmp_path / "gone", tmp_path / "out")
    rc, err = _main(capsys, detect_args(pair, tmp_path / "out"))
    one_error_line(rc, err, str(tmp_path / "out"), "symlink to a missing target")
    assert not (tmp_path / "gone").exists()


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux)")
def test_a_read_only_output_directory_is_one_line_through_the_console_script(pair, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"no user namespaces here ({probe.stderr.decode().strip()})")
    exe = shutil.which("m2cd", path=os.path.dirname(os.sys.executable)) or "m2cd"
    args = " ".join(f"'{a}'" for a in detect_args(pair, ro / "out"))
    script = f"mount --bind -o ro '{ro}' '{ro}' && exec '{exe}' {args}"
    res = subprocess.run(["unshare", "-rm", "sh", "-c", script], env=cli_env(),
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    one_error_line(res.returncode, res.stderr, str(ro / "out"), "not writable")
    assert list(ro.iterdir()) == []


@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    for key in list(os.environ):
        if key.startswith("AWS_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role to ask for
    monkeypatch.setenv("HOME", str(tmp_path))


def test_no_s3_credentials_at_all_is_one_line_for_outputs_and_inputs(
    pair, tmp_path, capsys, no_credentials
):
    rc, err = _main(capsys, detect_args(pair, "s3://m2cd-bucket/out"))
    one_error_line(rc, err, "s3://m2cd-bucket/out", "no S3 credentials found", "AWS_ACCESS_KEY_ID")
    from tests.reliability.support import Pair

    remote_input = Pair("s3://m2cd-bucket/optical.tif", pair.sar)
    rc, err = _main(capsys, detect_args(remote_input, tmp_path / "out"))
    one_error_line(rc, err, "s3://m2cd-bucket/optical.tif", "no S3 credentials found")
    assert not (tmp_path / "out").exists()


@pytest.fixture
def misfit_checkpoint(tiny_checkpoint, tmp_path):
    """The tiny checkpoint with its JSON saying 32 decoder channels (the weights have 64)."""
    ckpt = tmp_path / "misfit"
    shutil.copytree(tiny_checkpoint, ckpt)
    meta = json.loads((ckpt / "checkpoint.json").read_text())
    meta["model"]["decoder"]["channels"] = 32
    (ckpt / "checkpoint.json").write_text(json.dumps(meta))
    return ckpt


def test_a_checkpoint_whose_json_does_not_fit_its_weights_is_refused_at_plan_time(
    pair, tmp_path, capsys, misfit_checkpoint
):
    args = [a for a in detect_args(pair, tmp_path / "out") if a not in ("--model", "tiny")]
    rc, err = _main(capsys, [*args, "--checkpoint", str(misfit_checkpoint)])
    line = one_error_line(rc, err, str(misfit_checkpoint / "weights.safetensors"), "do not fit")
    assert "decoder.convs.0.conv.weight" in line
    assert not (tmp_path / "out").exists()  # refused before any staging


def test_train_init_from_a_misfit_checkpoint_is_one_line(tmp_path, capsys, misfit_checkpoint):
    scene = tmp_path / "scene"
    assert main(["synth", "--out", str(scene), "--size", "64", "64"]) == 0
    rc, err = _main(capsys, [
        "train", "--optical", str(scene / "optical.tif"), "--sar", str(scene / "sar.tif"),
        "--label", str(scene / "label.tif"), "--train-window", "0:64,0:64", "--model", "tiny",
        "--device", "cpu", "--no-progress", "--steps", "1", "--init", str(misfit_checkpoint),
        "--out", str(tmp_path / "run"),
    ])  # fmt: skip
    one_error_line(rc, err, str(misfit_checkpoint), "do not fit")


def test_synth_into_an_existing_file_is_one_line_and_the_file_is_kept(tmp_path, capsys):
    target = tmp_path / "scene"
    target.write_text("keep me")
    rc, err = _main(capsys, ["synth", "--out", str(target), "--size", "32", "32"])
    one_error_line(rc, err, str(target))
    assert target.read_text() == "keep me"


def test_two_optical_bands_are_refused_at_plan_time_not_in_finalize(pair, tmp_path):
    res = run_cli(detect_args(pair, tmp_path / "out", "--set", "optical.bands=[1,2]"))
    one_error_line(res.returncode, res.stderr, pair.optical, "optical.bands [1, 2]", "3 band(s)")
    assert not (tmp_path / "out").exists()  # no staging: a rerun does not find a half run


def test_a_block_smaller_than_a_tile_warns_with_its_cost(pair, tmp_path, capsys):
    args = detect_args(pair, tmp_path / "out", "--tile", "256", "--overlap", "32", "--block", "64")
    rc, err = _main(capsys, args)
    assert rc == 0, err
    warning = next(line for line in err.splitlines() if "tiling.block 64 px" in line)
    assert warning.startswith("warning: ") and "× the model time" in warning


def test_fp16_on_a_cpu_warns(pair, tmp_path, capsys):
    rc, err = _main(capsys, detect_args(pair, tmp_path / "out", "--set",
                                        "inference.precision=fp16"))  # fmt: skip
    assert rc == 0, err
    assert any(
        line.startswith("warning: inference.precision fp16 on a CPU") for line in err.splitlines()
    ), err


def test_fp16_training_on_a_cpu_warns_before_the_first_step():
    from types import SimpleNamespace

    from pipeline.training.trainer import warn_slow_precision

    cfg = SimpleNamespace(device="cpu", precision="fp16")  # the two fields the rule reads
    with pytest.warns(UserWarning, match=r"precision fp16 on a CPU .* ~10× slower"):
        warn_slow_precision(cfg)
