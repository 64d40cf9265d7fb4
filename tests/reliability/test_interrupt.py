"""Ctrl-C through the real console script (issue 15 point 1): exit 130 with one line, the thread
pool stops within seconds, finished blocks are kept, and the rerun resumes to identical products."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.polling import wait_for
from tests.reliability.support import (
    REPO,
    cli_env,
    fingerprint,
    interactive_sigint,
    published,
    run_cli,
)

SIZE, BLOCK = 256, 64  # 4×4 = 16 blocks of a few 64-px tiles each
DETECT_LINE = "interrupted: finished blocks are kept; run the same command to resume"
TRAIN_LINE = "interrupted: last checkpoint kept; rerun with --resume"


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    """A synthetic scene from `m2cd synth` (what a new user tries first)."""
    out = tmp_path_factory.mktemp("synth") / "scene"
    res = run_cli(["synth", "--out", str(out), "--size", str(SIZE), str(SIZE), "--seed", "3"])
    assert res.returncode == 0, res.stderr
    return out


def scene_detect_args(scene: Path, out: Path, workers: int) -> list[str]:
    return ["detect", str(scene / "optical.tif"), str(scene / "sar.tif"), "--out", str(out),
            "--model", "tiny", "--device", "cpu", "--tile", "64", "--overlap", "16",
            "--block", str(BLOCK), "--no-progress", "--workers", str(workers)]  # fmt: skip


@pytest.fixture(scope="module")
def clean(scene, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean") / "out"
    res = run_cli(scene_detect_args(scene, out, 1))
    assert res.returncode == 0, res.stderr
    return fingerprint(out)


def _start(args: list[str]) -> subprocess.Popen:
    """The console script in its own process group, stderr read after it exits."""
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "m2cd"), *args], cwd=REPO, env=cli_env(),
        start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=interactive_sigint,
    )  # fmt: skip


def _interrupt_when(proc: subprocess.Popen, ready, twice: bool) -> float:
    """SIGINT to the process group (what a terminal's Ctrl-C does) once `ready()`; the seconds
    from the first signal to the exit."""
    wait_for(lambda: ready() or proc.poll() is not None, 240, "the first block marker", 0.01)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    start = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    try:
        if twice:  # an impatient user: the second Ctrl-C must not abort in C++
            time.sleep(0.3)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
        proc.wait(120)
    finally:
        if proc.poll() is None:  # it ignored Ctrl-C: fail without leaving it running
            os.killpg(proc.pid, signal.SIGKILL)
    return time.monotonic() - start


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_ctrl_c_exits_130_keeps_blocks_and_the_rerun_is_identical(scene, clean, tmp_path, workers):
    out = tmp_path / "out"
    proc = _start([*scene_detect_args(scene, out, workers)])
    markers = lambda: list(out.glob(".m2cd/*/blocks/*.json"))  # noqa: E731
    seconds = _interrupt_when(proc, lambda: bool(markers()), twice=workers > 1)
    stderr = proc.stderr.read()
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == DETECT_LINE
    assert "Traceback" not in stderr and "terminate called" not in stderr
    assert seconds < 15, f"the pool took {seconds:.1f} s to stop"
    kept = len(markers())
    assert 1 <= kept < (SIZE // BLOCK) ** 2, "the pool ran every remaining block first"
    assert published(out) == []

    rerun = run_cli(scene_detect_args(scene, out, workers))
    assert rerun.returncode == 0, rerun.stderr
    assert f"({kept} resumed)" in rerun.stdout
    assert fingerprint(out) == clean


@pytest.mark.slow
def test_ctrl_c_during_train_exits_130_and_keeps_the_last_checkpoint(scene, tmp_path):
    out = tmp_path / "run"
    proc = _start(
        ["train", "--optical", str(scene / "optical.tif"), "--sar", str(scene / "sar.tif"),
         "--label", str(scene / "label.tif"), "--train-window", "0:192,0:256",
         "--val-window", "192:256,0:256", "--model", "tiny", "--steps", "100000", "--tile", "64",
         "--batch-size", "2", "--device", "cpu", "--no-progress", "--out", str(out),
         "--set", "checkpoint_every=2", "--set", "val_every=1000", "--set", "log_every=1"]
    )  # fmt: skip
    _interrupt_when(proc, lambda: (out / "last" / "train_state.json").exists(), twice=True)
    stderr = proc.stderr.read()
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == TRAIN_LINE
    assert "Traceback" not in stderr and "terminate called" not in stderr
    assert (out / "last" / "train_state.json").exists()
