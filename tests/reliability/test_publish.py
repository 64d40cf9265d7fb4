"""Crash-safe publishing (issue 15 point 3): the real console script is SIGKILLed at each step of
the publish protocol (`M2CD_CRASH_AT`, pipeline.engine.crash_points), then the same command runs
again: it completes the publish with no manual cleanup, `--overwrite` included, and the products
are the clean run's, byte for byte, with a `run.json` that names them."""

from __future__ import annotations

import json
import os
import shutil
import signal

import pytest

from tests.reliability.support import cli_env, detect_args, fingerprint, run_cli
from tests.reliability.support import write_pair as _write_pair

BLOCK = ["--block", "64"]  # 96×128 px: 2×2 blocks
POINTS = [
    "finalize",
    "products-written",
    "intent-written",
    "moved-change_prob.tif",
    "moved-item.json",
    "moved-change.zarr",
    "committed",
]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return _write_pair(tmp_path_factory.mktemp("pair"))


@pytest.fixture(scope="module")
def clean(pair, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean") / "out"
    res = run_cli(detect_args(pair, out, *BLOCK))
    assert res.returncode == 0, res.stderr
    return fingerprint(out), json.loads((out / "run.json").read_text())["run_key"]


def _killed_at(point: str, args: list[str]) -> None:
    res = run_cli(args, env=cli_env(M2CD_CRASH_AT=point))
    assert res.returncode == -signal.SIGKILL, (point, res.returncode, res.stderr[-2000:])


def _assert_complete(out, clean) -> None:
    digests, key = clean
    assert fingerprint(out) == digests
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["run_key"] == key
    assert all((out / name).exists() for name in manifest["summary"]["products"])
    assert not (out / ".m2cd").exists(), list((out / ".m2cd").rglob("*"))


@pytest.mark.slow
@pytest.mark.parametrize("point", POINTS)
def test_a_kill_at_each_publish_step_is_completed_by_the_rerun(pair, clean, tmp_path, point):
    out = tmp_path / "out"
    args = detect_args(pair, out, *BLOCK)
    _killed_at(point, args)
    if point != "committed":
        assert not (out / "run.json").exists(), "a half publish must not look committed"
    rerun = run_cli(args)
    assert rerun.returncode == 0, rerun.stderr
    assert "Traceback" not in rerun.stderr
    _assert_complete(out, clean)


@pytest.mark.slow
@pytest.mark.parametrize("point", ["intent-written", "moved-change_mask.tif", "moved-change.zarr"])
def test_a_kill_while_overwriting_another_run_is_completed_by_the_rerun(
    pair, clean, tmp_path, point
):
    out = tmp_path / "out"
    other = run_cli(detect_args(pair, out, *BLOCK, "--threshold", "0.3"))
    assert other.returncode == 0, other.stderr
    other_key = json.loads((out / "run.json").read_text())["run_key"]
    args = detect_args(pair, out, *BLOCK, "--overwrite")
    _killed_at(point, args)
    if point == "intent-written":  # nothing in OUT touched yet: still the other run, whole
        assert json.loads((out / "run.json").read_text())["run_key"] == other_key
    else:  # its commit record went first: no reader takes the mix for its products
        assert not (out / "run.json").exists()
    rerun = run_cli(args)
    assert rerun.returncode == 0, rerun.stderr
    _assert_complete(out, clean)


@pytest.mark.s3
@pytest.mark.slow
def test_a_kill_mid_publish_on_s3_is_completed_by_the_rerun(pair, clean, s3_env, tmp_path):
    """On S3 products are copied in (the staging copy stays whole until the commit)."""
    fs = s3_env.filesystem()
    bucket = s3_env.bucket()
    for path in (pair.optical, pair.sar):
        fs.put_file(path, f"{bucket}/in/{path.rsplit('/', 1)[-1]}")
    s3_pair = type(pair)(f"s3://{bucket}/in/optical.tif", f"s3://{bucket}/in/sar.tif")
    out = f"s3://{bucket}/out"
    args = detect_args(s3_pair, out, *BLOCK)
    env = cli_env(**s3_env.env())
    res = run_cli(args, env={**env, "M2CD_CRASH_AT": "moved-change.zarr"})
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    assert not fs.exists(f"{bucket}/out/run.json")
    rerun = run_cli(args, env=env)
    assert rerun.returncode == 0, rerun.stderr
    local = tmp_path / "out"
    fs.get(f"{bucket}/out/", str(local), recursive=True)
    digests, _ = clean
    assert fingerprint(local) == digests
    # no staging or lease object is left (seaweedfs keeps the emptied folder, which answers HEAD
    # as if it were an object: what counts on S3 is the keys listed under the prefix)
    left = fs.call_s3("list_objects_v2", Bucket=bucket, Prefix="out/.m2cd/").get("Contents", [])
    assert not left, [o["Key"] for o in left]


@pytest.mark.parametrize("how", ["same-path", "symlink"])
def test_overwrite_refuses_to_replace_one_of_the_runs_own_inputs(pair, tmp_path, how):
    out = tmp_path / "out"
    out.mkdir()
    target = out / "change_prob.tif"
    shutil.copyfile(pair.optical, target)
    optical = str(target)
    if how == "symlink":
        optical = str(tmp_path / "scene.tif")
        os.symlink(target, optical)
    before = target.read_bytes()
    args = detect_args(type(pair)(optical, pair.sar), out, *BLOCK, "--overwrite")
    res = run_cli(args)
    assert res.returncode == 2, res.stderr
    line = res.stderr.strip().splitlines()[-1]
    assert line == (
        f"error: {target}: is this run's optical input ({optical}); publishing would replace "
        "it: choose another --out"
    )
    assert target.read_bytes() == before and not (out / ".m2cd").exists()
