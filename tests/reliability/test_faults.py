"""Faults lose nothing: a killed Dask worker, a kill -9 of the whole run, the S3 server going away,
a full disk (issue 5, item 5). Products after recovery are byte-identical to a clean run's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.engine.block import pending_blocks
from pipeline.engine.finalize import finalize_run
from pipeline.engine.plan import plan_run
from tests.polling import wait_for
from tests.reliability.support import (
    REPO,
    cli_env,
    detect_args,
    fingerprint,
    published,
    request,
    run_block_noting,
    run_cli,
    write_pair,
)

H, W, BLOCK = 192, 256, 64  # 3×4 = 12 blocks of a few 64-px tiles each


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return write_pair(tmp_path_factory.mktemp("pair"), H, W, seed=5)


@pytest.fixture(scope="module")
def clean(pair, tmp_path_factory):
    """The reference: one uninterrupted CLI run with one torch thread, like every faulted run here
    (Dask workers and `--workers` pools run one thread each; see RELIABILITY.md on threads)."""
    out = tmp_path_factory.mktemp("clean") / "out"
    done = run_cli(detect_args(pair, out, "--block", str(BLOCK)))
    assert done.returncode == 0, done.stderr
    return fingerprint(out)


@pytest.mark.slow
def test_a_worker_killed_mid_block_is_retried_elsewhere(pair, clean, tmp_path):
    from tests.fixtures.dask import two_worker_cluster

    out, notes = tmp_path / "out", tmp_path / "notes"
    notes.mkdir()
    plan = plan_run(request(pair, out, BLOCK))
    ids = list(range(len(plan.blocks)))
    with two_worker_cluster(tmp_path / "dask") as (_, client):
        workers = set(client.run(os.getpid).values())
        futures = client.map(
            run_block_noting, [plan] * len(ids), ids, [str(notes)] * len(ids), [1.0] * len(ids),
            pure=False,
        )  # fmt: skip

        def half_done_block():  # a block with a batch noted but no completion marker yet
            for note in notes.iterdir():
                block_id, pid = (int(v) for v in note.name.split("-"))
                if pid in workers and not Path(plan.marker_uri(plan.blocks[block_id])).exists():
                    return block_id, pid
            return None

        victim_block, victim = wait_for(half_done_block, 180, "a block in progress", interval=0.05)
        os.kill(victim, signal.SIGKILL)
        results = client.gather(futures)
        survivors = set(client.run(os.getpid).values())
    assert victim not in survivors  # the nanny replaced the killed process
    assert [r.block_id for r in results] == ids
    marker = json.loads(Path(plan.marker_uri(plan.blocks[victim_block])).read_text())
    assert marker["pid"] != victim  # the half-done block was finished by another process
    assert (notes / f"{victim_block}-{marker['pid']}").exists()
    finalize_run(plan)
    assert fingerprint(out) == clean


@pytest.mark.slow
def test_kill_9_of_the_whole_run_resumes_without_recomputing(pair, clean, tmp_path):
    out = tmp_path / "out"
    args = detect_args(pair, out, "--block", str(BLOCK), "--workers", "2")
    exe = Path(sys.executable).parent / "m2cd"
    proc = subprocess.Popen(
        [str(exe), *args], cwd=REPO, env=cli_env(), start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    markers = lambda: list(out.glob(".m2cd/*/blocks/*.json"))  # noqa: E731
    wait_for(lambda: len(markers()) >= 3 or proc.poll() is not None, 240, "3 finished blocks", 0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole run (CLI and any child), like an OOM kill
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    time.sleep(0.5)
    done = {p.name for p in markers()}
    plan = plan_run(request(pair, out, BLOCK))
    assert 3 <= len(done) < len(plan.blocks)
    assert published(out) == []  # nothing was published mid-run
    assert len(pending_blocks(plan)) == len(plan.blocks) - len(done)

    calls = tmp_path / "calls.txt"
    resumed = subprocess.run(
        [sys.executable, "-m", "tests.reliability.counted_cli", *detect_args(pair, out, "--block", str(BLOCK))],
        cwd=REPO, env=cli_env(M2CD_TEST_CALLS=str(calls)), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert f"({len(done)} resumed)" in resumed.stdout
    computed = calls.read_text().splitlines() if calls.exists() else []
    assert len(computed) == len(plan.blocks) - len(done)  # no finished block computed again
    assert fingerprint(out) == clean


# ---------------------------------------------------------------------------------------------
# the S3 server goes away mid-run


def _s3_fingerprint(fs, prefix: str, local: Path) -> dict[str, str]:
    fs.get(prefix, str(local), recursive=True)
    return fingerprint(local)


@pytest.mark.s3
@pytest.mark.slow
def test_s3_server_killed_mid_run_fails_clearly_and_resumes(pair, clean, tmp_path):
    from tests.reliability.support import Pair, PrivateWeed

    server = PrivateWeed(tmp_path / "weed")
    server.start()
    try:
        fs = server.filesystem()
        fs.mkdir("faults")
        for path in (pair.optical, pair.sar):
            fs.put_file(path, f"faults/in/{Path(path).name}")
        remote = Pair("s3://faults/in/optical.tif", "s3://faults/in/sar.tif")
        out, env = "s3://faults/out", cli_env(**server.env())
        args = detect_args(remote, out, "--block", str(BLOCK))
        exe = Path(sys.executable).parent / "m2cd"
        proc = subprocess.Popen(
            [str(exe), *args], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip

        def markers() -> list[str]:
            try:
                return [p for p in fs.find("faults/out/.m2cd") if "/blocks/" in p]
            except OSError:
                return []

        wait_for(lambda: len(markers()) >= 2 or proc.poll() is not None, 240, "2 blocks", 0.1)
        server.kill()
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 3, err  # transient: retry later
        assert "Traceback" not in err
        line = err.strip().splitlines()[-1]
        assert line.startswith("error: storage or network unavailable") and "resume" in line
        assert server.SECRET_KEY not in err

        server.start()  # same data directory and ports
        done = markers()
        assert len(done) >= 2  # every block finished before the outage is intact
        assert not fs.exists("faults/out/run.json") and not fs.exists("faults/out/item.json")
        calls = tmp_path / "calls.txt"
        resumed = subprocess.run(
            [sys.executable, "-m", "tests.reliability.counted_cli", *args], cwd=REPO,
            env={**env, "M2CD_TEST_CALLS": str(calls)}, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert resumed.returncode == 0, resumed.stderr
        computed = calls.read_text().splitlines() if calls.exists() else []
        assert len(computed) == 12 - len(done)
        assert _s3_fingerprint(fs, "faults/out", tmp_path / "got") == clean
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------------
# the output disk fills up

_FULL_DISK = r"""
set -u
mount -t tmpfs -o size=4m tmpfs "$MNT" || exit 97
python - <<'PY'
import os
st = os.statvfs(os.environ["MNT"])
with open(os.path.join(os.environ["MNT"], "filler"), "wb") as f:
    f.write(b"\0" * (st.f_bavail * st.f_frsize - int(os.environ["FREE_KB"]) * 1024))
PY
m2cd "$@" > "$KEEP/first.out" 2> "$KEEP/first.err"; echo $? > "$KEEP/first.rc"
(cd "$MNT/out" && find . -type f | sort) > "$KEEP/first.files"
rm "$MNT/filler"
m2cd "$@" > "$KEEP/second.out" 2> "$KEEP/second.err"; echo $? > "$KEEP/second.rc"
cp -r "$MNT/out" "$KEEP/out"
"""


@pytest.mark.slow
def test_a_full_output_disk_fails_clearly_and_publishes_nothing(pair, clean, tmp_path):
    """A real 4 MiB tmpfs filled up to 450 KiB free, mounted in a private mount namespace
    (`unshare -rm`: no root needed where user namespaces are allowed, nothing left mounted)."""
    import shutil

    if shutil.which("unshare") is None:
        pytest.skip("util-linux `unshare` not found: cannot mount a private tmpfs")
    mnt, keep = tmp_path / "mnt", tmp_path / "keep"
    mnt.mkdir()
    keep.mkdir()
    env = cli_env(MNT=str(mnt), KEEP=str(keep), FREE_KB="450")
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    args = detect_args(pair, mnt / "out", "--block", str(BLOCK))
    done = subprocess.run(
        ["unshare", "-rm", "sh", "-c", _FULL_DISK, "sh", *args], cwd=REPO, env=env,
        capture_output=True, text=True, timeout=500,
    )  # fmt: skip
    if done.returncode == 97:
        pytest.skip(f"cannot mount a tmpfs in a user namespace here: {done.stderr.strip()}")
    first_err = (keep / "first.err").read_text()
    assert (keep / "first.rc").read_text().strip() == "2", first_err
    assert "Traceback" not in first_err
    line = first_err.strip().splitlines()[-1]
    assert line.startswith(f"error: {mnt / 'out'}: no space left on the device"), first_err
    files = (keep / "first.files").read_text().split()
    assert files and all(f.startswith("./.m2cd/") for f in files), files  # nothing published
    finished = [f for f in files if "/blocks/" in f]
    assert (keep / "second.rc").read_text().strip() == "0", (keep / "second.err").read_text()
    assert f"({len(finished)} resumed)" in (keep / "second.out").read_text()
    assert fingerprint(keep / "out") == clean


@pytest.mark.s3
@pytest.mark.prefect
@pytest.mark.slow
def test_s3_outage_during_a_detect_scene_flow_is_bridged_by_task_retries(
    pair, clean, tmp_path, prefect_env, monkeypatch
):
    """The orchestrated path: a 3 s outage (plus the restart) in the middle of the block tasks is
    bridged by retries (the S3 client's, then the block task's after 2 s, 10 s, 30 s), so it costs
    time, not the run; the products are identical to the clean run's."""
    import threading

    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.detect_scene import detect_scene
    from tests.reliability.support import SMALL, PrivateWeed

    server = PrivateWeed(tmp_path / "weed")
    server.start()
    try:
        for key, value in server.env().items():
            monkeypatch.setenv(key, value)
        fs = server.filesystem()
        fs.mkdir("flows")
        for path in (pair.optical, pair.sar):
            fs.put_file(path, f"flows/in/{Path(path).name}")
        ck = tmp_path / "ck"
        _save_tiny(ck)
        outage: dict[str, float] = {}

        def cut_and_restore() -> None:
            def blocks() -> int:
                try:
                    return sum("/blocks/" in p for p in fs.find("flows/out/.m2cd"))
                except OSError:
                    return 0

            wait_for(lambda: blocks() >= 2, 300, "2 finished blocks", 0.1)
            outage["blocks_before"] = blocks()
            server.kill()
            time.sleep(3)
            server.start()
            outage["restarted"] = time.monotonic()

        cutter = threading.Thread(target=cut_and_restore, daemon=True)
        cutter.start()
        state = detect_scene(
            optical="s3://flows/in/optical.tif", sar="s3://flows/in/sar.tif",
            output="s3://flows/out", model=str(ck), overrides={**SMALL, "tiling.block": BLOCK},
            return_state=True,
        )  # fmt: skip
        finished = time.monotonic()
        cutter.join(60)
        assert state.is_completed(), state.message
        assert finished > outage["restarted"]  # the run went on through the outage
        client = SyncPrefectClient(prefect_env["PREFECT_API_URL"])
        run_id = state.state_details.flow_run_id
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
        )
        blocks = [t for t in tasks if t.name.startswith("block-")]
        assert len(blocks) == 12 and all(t.state.is_completed() for t in blocks)
        assert 2 <= outage["blocks_before"] < 12  # the server died in the middle of the run
        # bridged by the S3 client's own retries, or by a task retry: either way no block failed
        print("block task run counts:", sorted(t.run_count for t in blocks))
        assert _s3_fingerprint(fs, "flows/out", tmp_path / "got") == clean
    finally:
        server.stop()


def _save_tiny(path: Path) -> None:
    import torch

    import m2cd

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        m2cd.save_checkpoint(m2cd.build_model("tiny"), path)
