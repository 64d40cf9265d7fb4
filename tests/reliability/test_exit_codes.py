"""Exit codes scripts can act on (issue 15 points 7 and 9): 2 for anything a retry cannot fix,
3 only for transient faults, through the real console script."""

from __future__ import annotations

import errno
import os

import pytest

from flows.faults import is_transient, permanent_os_error
from tests.reliability.support import detect_args, one_error_line, run_cli, write_pair


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return write_pair(tmp_path_factory.mktemp("pair"), 64, 64)


def _one_error_line(res, *needles: str) -> str:
    assert "run the same command again" not in res.stderr  # not offered as transient
    return one_error_line(res.returncode, res.stderr, *needles)


def test_a_file_name_too_long_exits_2_naming_the_path(pair, tmp_path):
    out = tmp_path / ("x" * 300)
    line = _one_error_line(run_cli(detect_args(pair, out)), str(out), "File name too long")
    assert line.startswith(f"error: {out}")


def test_an_output_under_a_regular_file_exits_2_naming_the_path(pair, tmp_path):
    (tmp_path / "file").write_text("not a directory")
    out = tmp_path / "file" / "out"
    _one_error_line(run_cli(detect_args(pair, out)), str(out), "Not a directory")


def test_an_output_in_a_symlink_loop_exits_2(pair, tmp_path):
    os.symlink(tmp_path / "loop", tmp_path / "loop")
    _one_error_line(run_cli(detect_args(pair, tmp_path / "loop" / "out")), str(tmp_path / "loop"))


@pytest.mark.parametrize("workers", ["0", "-1"])
def test_workers_below_one_are_refused_in_one_line(pair, tmp_path, workers):
    res = run_cli(detect_args(pair, tmp_path / "out", "--workers", workers))
    _one_error_line(res, "--workers", "at least 1", f"got {workers}")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "code",
    ["ENAMETOOLONG", "EACCES", "EPERM", "ENOTDIR", "EISDIR", "EROFS", "ELOOP", "EEXIST", "ENOENT"],
)
def test_permanent_os_errors_are_never_transient(code):
    exc = OSError(getattr(errno, code), os.strerror(getattr(errno, code)), "/some/path")
    assert not is_transient(exc)
    assert permanent_os_error(exc) == f"/some/path: {os.strerror(getattr(errno, code))}"
    wrapped = RuntimeError("writing a block failed")
    wrapped.__cause__ = exc
    assert not is_transient(wrapped)


@pytest.mark.parametrize("code", ["EIO", "ECONNRESET", "ETIMEDOUT"])
def test_io_and_network_os_errors_stay_transient(code):
    exc = OSError(getattr(errno, code), os.strerror(getattr(errno, code)))
    assert is_transient(exc)
    assert permanent_os_error(exc) is None


def test_an_os_error_without_errno_stays_transient():
    assert is_transient(OSError("curl: connection reset"))


def test_malformed_yaml_in_set_is_one_line_naming_the_item(pair, tmp_path):
    res = run_cli(detect_args(pair, tmp_path / "out", "--set", "tiling.tile=[1,"))
    _one_error_line(res, "--set 'tiling.tile=[1,'", "not valid YAML")
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "scene"
    assert run_cli(["synth", "--out", str(out), "--size", "64", "64"]).returncode == 0
    return out


def _train_args(scene, out, *more: str) -> list[str]:
    return ["train", "--optical", str(scene / "optical.tif"), "--sar", str(scene / "sar.tif"),
            "--label", str(scene / "label.tif"), "--train-window", "0:64,0:64", "--model", "tiny",
            "--device", "cpu", "--no-progress", "--out", str(out), *more]  # fmt: skip


def test_train_steps_0_names_the_field(scene, tmp_path):
    res = run_cli(_train_args(scene, tmp_path / "run", "--steps", "0"))
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert "stages.0.steps: Input should be greater than or equal to 1 (got 0)" in res.stderr


def test_train_init_that_is_no_checkpoint_names_the_path(scene, tmp_path):
    missing = tmp_path / "no-such-checkpoint"
    res = run_cli(_train_args(scene, tmp_path / "run", "--steps", "2", "--init", str(missing)))
    _one_error_line(res, str(missing), "not a checkpoint directory")
