"""Staging hygiene (issue 15 point 8), through the real console script: the run key follows the
inputs' content (a touched or copied input resumes), stale staging of other runs is removed by
the next run of the output, and `m2cd clean OUT` lists staging (dry run) and removes it (`--yes`)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time

import pytest

from pipeline.io.lease import writer_lease
from tests.reliability.support import cli_env, detect_args, published, run_cli, write_pair

BLOCK = ["--block", "64"]  # 96×128 px: 4 blocks
BLOCKS = 4
DAY = 86_400


@pytest.fixture
def pair(tmp_path):
    return write_pair(tmp_path / "in")


def _staged(pair, out, *more: str) -> str:
    """A run killed right after its last block: every block kept, nothing published; its key."""
    res = run_cli(detect_args(pair, out, *BLOCK, *more), env=cli_env(M2CD_CRASH_AT="finalize"))
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    (key,) = [p.name for p in (out / ".m2cd").iterdir() if p.is_dir()]
    return key


def _age(folder, days: float) -> None:
    then = time.time() - days * DAY
    for path in [folder, *folder.rglob("*")]:
        os.utime(path, (then, then))


@pytest.mark.slow
def test_a_touched_or_copied_input_resumes_every_block(pair, tmp_path):
    out = tmp_path / "out"
    key = _staged(pair, out)
    os.utime(pair.optical)  # touch
    copy = tmp_path / "copy.tif"
    shutil.copyfile(pair.sar, copy)  # cp: a new inode and mtime, the same bytes
    os.replace(copy, pair.sar)
    res = run_cli(detect_args(pair, out, *BLOCK))
    assert res.returncode == 0, res.stderr
    assert f"({BLOCKS} resumed)" in res.stdout
    assert json.loads((out / "run.json").read_text())["run_key"] == key


@pytest.mark.slow
def test_stale_staging_of_another_run_is_removed_by_the_next_run(pair, tmp_path):
    out = tmp_path / "out"
    old = _staged(pair, out, "--threshold", "0.3")
    _age(out / ".m2cd" / old, 8)
    res = run_cli(detect_args(pair, out, *BLOCK, "--threshold", "0.6"))
    assert res.returncode == 0, res.stderr
    assert f"removed stale staging {out / '.m2cd' / old}: 4/4 blocks done" in res.stderr
    assert not (out / ".m2cd").exists()
    assert "run.json" in published(out)


@pytest.mark.slow
def test_staging_younger_than_the_limit_is_kept(pair, tmp_path):
    out = tmp_path / "out"
    young = _staged(pair, out, "--threshold", "0.3")
    _age(out / ".m2cd" / young, 2)
    res = run_cli(detect_args(pair, out, *BLOCK, "--set", "output.staging_max_age_days=3"))
    assert res.returncode == 0, res.stderr
    assert (out / ".m2cd" / young / "plan.json").exists()


@pytest.mark.slow
def test_clean_lists_staging_and_removes_it_only_with_yes(pair, tmp_path):
    out = tmp_path / "out"
    key = _staged(pair, out)
    dry = run_cli(["clean", str(out)])
    assert dry.returncode == 0, dry.stderr
    assert f"{out / '.m2cd' / key}: 4/4 blocks done, last touched 0.0 days ago" in dry.stdout
    assert "nothing removed (dry run): pass --yes to remove them" in dry.stdout
    assert (out / ".m2cd" / key / "plan.json").exists()
    old = run_cli(["clean", str(out), "--older-than", "1", "--yes"])
    assert old.returncode == 0 and "no staging runs" in old.stdout, old.stdout
    with writer_lease(str(out), "test-holder"):  # a run in progress: its staging is left alone
        busy = run_cli(["clean", str(out), "--yes"])
    assert busy.returncode == 2 and "is writing this output" in busy.stderr, busy.stderr
    assert (out / ".m2cd" / key).exists()
    gone = run_cli(["clean", str(out), "--yes"])
    assert gone.returncode == 0, gone.stderr
    assert "removed 1 staging run(s)" in gone.stdout
    assert not (out / ".m2cd").exists()
    again = run_cli(detect_args(pair, out, *BLOCK))  # nothing resumed, nothing broken
    assert again.returncode == 0 and "(0 resumed)" in again.stdout, again.stderr
