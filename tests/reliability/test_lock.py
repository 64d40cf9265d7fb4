"""One writer per output (issue 15 point 2), through the real console script: two runs into one
output never interleave, the second waits (`output.lock_wait_s`) or stops with one line (exit 2),
a killed run's lease is taken over (local disks at once, S3 once it expired), and what a run
reports is always what is published."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.io.lease import writer_lease
from tests.reliability.support import REPO, cli_env, detect_args, published, run_cli, write_pair

BLOCK = ["--block", "64"]
BUSY = "is writing this output; waited"


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return write_pair(tmp_path_factory.mktemp("pair"))


def _start(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "m2cd"), *args], cwd=REPO, env=env or cli_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _published_changed_px(out: Path) -> int:
    import rasterio

    with rasterio.open(out / "change_mask.tif") as src:
        return int((src.read(1) == 1).sum())


def _assert_report_is_published(out: Path, stdout: str) -> dict:
    """The run's own JSON report names the committed run and counts the published mask."""
    report = json.loads(stdout)
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["run_key"] == report["run_key"]
    assert {**manifest["summary"], "already_finished": report["already_finished"]} == report
    assert _published_changed_px(out) == report["changed_px"]
    return report


def _race(pair, out: Path, thresholds: tuple[str, str], *more: str):
    """Both runs started together; (returncode, stdout, stderr, exit order) of each."""
    procs = [
        _start(detect_args(pair, out, *BLOCK, "--json", "--threshold", t, *more))
        for t in thresholds
    ]
    order: list[int] = []
    while len(order) < len(procs):
        for i, p in enumerate(procs):
            if i not in order and p.poll() is not None:
                order.append(i)
        time.sleep(0.02)
    return [(p.returncode, *p.communicate(), order.index(i)) for i, p in enumerate(procs)]


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(4))
def test_two_concurrent_runs_into_one_output_never_swap_products(pair, tmp_path, trial):
    out = tmp_path / "out"
    results = _race(pair, out, ("0.3", "0.6"))
    codes = sorted(r[0] for r in results)
    assert codes == [0, 2], [(r[0], r[2][-600:]) for r in results]
    for code, stdout, stderr, _ in results:
        assert "Traceback" not in stderr
        if code == 0:
            _assert_report_is_published(out, stdout)
        else:  # lost the lease, or took it after the winner published
            last = stderr.strip().splitlines()[-1]
            assert BUSY in last or "holds the products of another run" in last, last


@pytest.mark.slow
def test_a_waiting_run_with_overwrite_publishes_after_the_first(pair, tmp_path):
    """With a wait both finish; the later one replaced the earlier one's products, in full."""
    out = tmp_path / "out"
    wait = ["--set", "output.lock_wait_s=240", "--overwrite"]
    results = _race(pair, out, ("0.3", "0.6"), *wait)
    assert [r[0] for r in results] == [0, 0], [r[2][-600:] for r in results]
    last = next(r for r in results if r[3] == 1)
    _assert_report_is_published(out, last[1])
    first = next(r for r in results if r[3] == 0)
    assert json.loads(first[1])["run_key"] != json.loads(last[1])["run_key"]


def test_a_run_into_a_held_output_fails_in_one_line_or_waits(pair, tmp_path):
    out = tmp_path / "out"
    with writer_lease(str(out), "test-holder"):
        res = run_cli(detect_args(pair, out, *BLOCK))
        assert res.returncode == 2, res.stderr
        line = res.stderr.strip().splitlines()[-1]
        assert line.startswith(f"error: {out}: another m2cd run (pid {os.getpid()} on "), line
        assert "set output.lock_wait_s to wait longer" in line
        assert published(out) == []
        waiting = _start(detect_args(pair, out, *BLOCK, "--set", "output.lock_wait_s=120"))
        time.sleep(4)
        assert waiting.poll() is None, waiting.communicate()
    _, stderr = waiting.communicate(timeout=240)
    assert waiting.returncode == 0, stderr
    assert "run.json" in published(out)


def test_the_lock_of_a_killed_local_run_is_taken_over_at_once(pair, tmp_path):
    out = tmp_path / "out"
    args = detect_args(pair, out, *BLOCK)
    killed = run_cli(args, env=cli_env(M2CD_CRASH_AT="finalize"))
    assert killed.returncode == -signal.SIGKILL
    assert json.loads((out / ".m2cd" / "lock").read_text())["pid"] > 0  # its record stays
    res = run_cli(args)  # no wait: the kernel dropped the dead run's flock
    assert res.returncode == 0, res.stderr
    assert "run.json" in published(out) and not (out / ".m2cd").exists()


@pytest.mark.s3
@pytest.mark.slow
def test_a_killed_runs_s3_lease_is_taken_over(pair, s3_env, tmp_path):
    """From this host at once (its pid is gone); from another host once it expired."""
    fs = s3_env.filesystem()
    bucket = s3_env.bucket()
    for path in (pair.optical, pair.sar):
        fs.put_file(path, f"{bucket}/in/{Path(path).name}")
    s3_pair = type(pair)(f"s3://{bucket}/in/optical.tif", f"s3://{bucket}/in/sar.tif")
    out, lock = f"s3://{bucket}/out", f"{bucket}/out/.m2cd/lock"
    env = cli_env(**s3_env.env())
    args = detect_args(s3_pair, out, *BLOCK, "--overwrite")
    killed = run_cli(args, env={**env, "M2CD_CRASH_AT": "finalize"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert json.loads(fs.cat(lock))["pid"] > 0  # left behind, not yet expired (120 s)
    res = run_cli(args, env=env)
    assert res.returncode == 0, res.stderr
    assert fs.exists(f"{bucket}/out/run.json") and not fs.exists(lock)

    # a run elsewhere that vanished 0 s ago with a 20 s lease (the refused run takes ~10 s)
    expires = time.time() + 20
    holder = {"host": "elsewhere", "pid": 1, "since": "then", "expires": expires}
    fs.pipe(lock, json.dumps(holder).encode())
    again = args + ["--threshold", "0.6"]
    busy = run_cli(again, env=env)
    if time.time() < expires:  # certainly refused while fresh
        assert busy.returncode == 2, busy.stderr
        assert "(pid 1 on elsewhere, since then)" in busy.stderr and BUSY in busy.stderr
    waited = run_cli([*again, "--set", "output.lock_wait_s=120"], env=env)
    assert waited.returncode == 0, waited.stderr
    assert time.time() >= expires
    assert not fs.exists(lock)


def test_identical_runs_at_once_give_one_result_and_no_traceback(pair, tmp_path):
    out = tmp_path / "out"
    results = _race(pair, out, ("0.45", "0.45"))
    for code, stdout, stderr, _ in results:
        assert "Traceback" not in stderr
        assert code in (0, 2), stderr
        if code == 0:  # the winner, or a run that found it already finished
            _assert_report_is_published(out, stdout)
    assert 0 in [r[0] for r in results]
