"""Output locations cannot escape the configured root; products are never overwritten silently
(issue 5, item 3)."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime

import pytest

from pipeline.errors import InputError
from pipeline.io.paths import OUTPUT_ROOT_ENV, UnsafePathError, check_name, child, resolve_output
from tests.reliability.support import detect_args, published, run_cli, write_pair


@pytest.mark.parametrize(
    "name",
    [
        "..",
        ".",
        "../x",
        "a/b",
        "/abs",
        "",
        " x",
        "a b",
        "x;rm",
        "a\x00b",
        ".hidden",
        "é",
        "x" * 129,
    ],
)
def test_unsafe_names_are_refused(name):
    with pytest.raises(UnsafePathError, match="pair id"):
        check_name(name, "pair id")


@pytest.mark.parametrize("name", ["20260101T000000-ab12cd34", "norcia", "s1_vv.2026-01-01", "A-1"])
def test_plain_names_pass(name):
    assert check_name(name) == name
    assert child("s3://bucket/out", name) == f"s3://bucket/out/{name}"


@pytest.mark.parametrize(
    ("prefix", "root"),
    [
        ("../escape", "/data/out"),
        ("a/../../escape", "/data/out"),
        ("/etc/m2cd", "/data/out"),
        ("/data/outside", "/data/out"),  # a sibling sharing the root's name as a prefix
        ("s3://bucket/out", "/data/out"),
        ("s3://bucket/other/x", "s3://bucket/out"),
        ("s3://bucket/outx", "s3://bucket/out"),
        ("s3://bucket/out/../x", "s3://bucket/out"),
        ("s3://other-bucket/out/x", "s3://bucket/out"),
        ("/data/out/x", "s3://bucket/out"),
        ("x\ny", "/data/out"),
        ("C:\\x", "/data/out"),
    ],
)
def test_prefixes_outside_the_root_are_refused(prefix, root):
    with pytest.raises(UnsafePathError) as info:
        resolve_output(prefix, root)
    assert prefix in str(info.value) or repr(prefix) in str(info.value)  # names the value


def test_prefixes_inside_the_root_resolve_there(tmp_path):
    root = str(tmp_path / "root")
    assert resolve_output("region/pair", root) == os.path.join(root, "region", "pair")
    assert resolve_output(f"{root}/a/b", root) == f"{root}/a/b"
    assert resolve_output("x/y", "s3://bucket/out/") == "s3://bucket/out/x/y"
    assert resolve_output("s3://bucket/out/x", "s3://bucket/out") == "s3://bucket/out/x"
    # without a root only the syntax rules apply (a CLI user may write ../out)
    assert resolve_output("../out", None) == "../out"
    with pytest.raises(UnsafePathError, match="'..'"):
        resolve_output("s3://bucket/a/../b", None)


def test_a_symlink_inside_the_root_cannot_lead_out(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "link").symlink_to(outside)
    with pytest.raises(UnsafePathError, match="inside the output root"):
        resolve_output(str(root / "link" / "x"), str(root))


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return write_pair(tmp_path_factory.mktemp("pair"))


def test_plan_refuses_an_escaping_output_before_reading_or_writing(pair, tmp_path, monkeypatch):
    from pipeline.config import load_detect_config
    from pipeline.engine.plan import plan_run
    from pipeline.engine.request import DetectRequest

    root = tmp_path / "root"
    monkeypatch.setenv(OUTPUT_ROOT_ENV, str(root))
    cfg = load_detect_config("default")
    escape = str(tmp_path / "escaped")
    missing = str(tmp_path / "not-even-opened.tif")  # the output is checked before the inputs
    with pytest.raises(UnsafePathError, match="inside the output root"):
        plan_run(DetectRequest(optical=missing, sar=pair.sar, out=escape, model="tiny", config=cfg))
    with pytest.raises(UnsafePathError, match="'..'"):
        plan_run(
            DetectRequest(optical=missing, sar=pair.sar, out="a/../../x", model="tiny", config=cfg)
        )
    assert not os.path.exists(escape) and not root.exists()
    assert isinstance(UnsafePathError("x", "y"), InputError)  # the CLI prints it, exit 2


def test_monitor_region_pair_ids_cannot_climb_out(tmp_path):
    from flows.monitor_region import pair_output
    from pipeline.catalog import Pair, RegionConfig, SceneRef

    region = RegionConfig(name="r1", source={"uri": str(tmp_path)}, output=str(tmp_path / "out"))
    when = datetime(2026, 1, 1, tzinfo=UTC)
    scene = SceneRef(uri="a.tif", role="optical", datetime=when, id="a")
    sar = SceneRef(uri="b.tif", role="sar", datetime=when, id="b")
    good = Pair(id="20260101T000000-ab12cd34", optical=scene, sar=sar)
    assert pair_output(region, good) == str(tmp_path / "out" / good.id)
    with pytest.raises(UnsafePathError, match="pair id"):
        pair_output(region, Pair(id="../../etc", optical=scene, sar=sar))


def test_cli_output_outside_the_root_exits_2(pair, tmp_path):
    from tests.reliability.support import cli_env

    env = cli_env(**{OUTPUT_ROOT_ENV: str(tmp_path / "root")})
    proc = run_cli(detect_args(pair, "../../../tmp/escape"), env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ../../../tmp/escape: output prefix may not contain '..'")


def _digests(out) -> dict[str, str]:
    return {
        n: hashlib.sha256((out / n).read_bytes()).hexdigest()
        for n in published(out)
        if n != "change.zarr"
    }


def test_existing_products_are_never_overwritten_without_the_flag(pair, tmp_path, capsys):
    from flows.cli import main

    out = tmp_path / "out"
    assert main(detect_args(pair, out)) == 0, capsys.readouterr().err
    before = _digests(out)
    # another run (another config) into the same prefix, through the real console script:
    # refused, nothing touched
    other = run_cli(detect_args(pair, out, "--set", "products.min_mapping_unit_px=5"))
    assert other.returncode == 2 and "Traceback" not in other.stderr
    assert str(out) in other.stderr and "--overwrite" in other.stderr
    assert _digests(out) == before
    # foreign files without a manifest are protected too
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "change_mask.tif").write_bytes(b"someone else's product")
    capsys.readouterr()
    assert main(detect_args(pair, stray)) == 2
    assert "change_mask.tif" in capsys.readouterr().err
    assert (stray / "change_mask.tif").read_bytes() == b"someone else's product"
    # with the flag the new run replaces them
    args = detect_args(pair, out, "--set", "products.min_mapping_unit_px=5", "--overwrite")
    assert main(args) == 0, capsys.readouterr().err
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["plan"]["config"]["products"]["min_mapping_unit_px"] == 5


@pytest.mark.s3
def test_missing_output_bucket_is_an_input_error(s3_env):
    from pipeline.io.paths import require_bucket

    bucket = s3_env.bucket()
    require_bucket(f"s3://{bucket}/out")
    with pytest.raises(InputError, match="bucket 'm2cd-absent-bucket' does not exist"):
        require_bucket("s3://m2cd-absent-bucket/out")
