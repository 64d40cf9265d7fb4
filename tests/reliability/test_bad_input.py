"""Bad input fails clearly: exit code 2, one `error:` line naming the file and the problem, no
traceback, and nothing published in the output prefix (issue 5, item 1).

Most cases call the console script's entry point (`flows.cli.main`) in-process, which is exactly
what `m2cd` runs; `test_real_console_script_*` runs the installed `m2cd` in a subprocess too.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from affine import Affine

from flows.cli import main
from pipeline.config import load_detect_config
from pipeline.errors import InputError
from tests.reliability.support import (
    detect_args,
    pair_arrays,
    published,
    run_cli,
    write_pair,
    write_raster,
)


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return write_pair(tmp_path_factory.mktemp("good"))


def files_under(out: Path) -> list[str]:
    return (
        sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
        if out.exists()
        else []
    )


def fails_clearly(capsys, args: list[str], *needles: str) -> str:
    """Run the CLI; assert exit 2, no traceback, the message names everything in `needles`."""
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    line = next(x for x in err.splitlines() if x.startswith("error: "))
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"
    return line


def _missing(d, good):
    return str(d / "nope.tif"), good.sar, "file not found"


def _zero(d, good):
    (d / "zero.tif").write_bytes(b"")
    return str(d / "zero.tif"), good.sar, "empty file"


def _corrupt(d, good):
    (d / "corrupt.tif").write_bytes(np.random.default_rng(0).bytes(4096))
    return str(d / "corrupt.tif"), good.sar, "not a readable raster"


def _truncated_sar(d, good):
    raw = Path(good.sar).read_bytes()
    (d / "trunc.tif").write_bytes(raw[: len(raw) // 2])
    return good.optical, str(d / "trunc.tif"), "truncated"


def _truncated_optical(d, good):  # header intact, pixels cut: fails in the block, not at open
    raw = Path(good.optical).read_bytes()
    (d / "trunc.tif").write_bytes(raw[: len(raw) * 2 // 3])
    return str(d / "trunc.tif"), good.sar, "truncated"


def _sar_three_bands(d, good):
    _, sar = pair_arrays(96, 128)
    return good.optical, write_raster(d / "sar3.tif", np.concatenate([sar] * 3)), "3 bands"


def _optical_two_bands(d, good):
    optical, _ = pair_arrays(96, 128)
    return write_raster(d / "opt2.tif", optical[:2]), good.sar, "2 bands"


def _no_overlap(d, good):
    _, sar = pair_arrays(96, 128)
    far = Affine(10.0, 0, 700_000.0, 0, -10.0, 4_600_000.0)
    return good.optical, write_raster(d / "far.tif", sar, transform=far), "do not overlap"


def _crs_one_side(d, good):
    _, sar = pair_arrays(96, 128)
    return good.optical, write_raster(d / "nocrs.tif", sar, crs=None), "only one has a CRS"


def _all_nodata(d, good):
    _, sar = pair_arrays(96, 128)
    return good.optical, write_raster(d / "zeros.tif", np.zeros_like(sar)), "no valid pixel"


CASES = {
    "missing": _missing,
    "zero_size": _zero,
    "corrupt": _corrupt,
    "truncated_sar": _truncated_sar,
    "truncated_optical": _truncated_optical,
    "sar_three_bands": _sar_three_bands,
    "optical_two_bands": _optical_two_bands,
    "no_overlap": _no_overlap,
    "crs_one_side": _crs_one_side,
    "all_nodata": _all_nodata,
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_local_input_fails_clearly_and_publishes_nothing(case, good, tmp_path, capsys):
    optical, sar, problem = CASES[case](tmp_path, good)
    bad = optical if optical != good.optical else sar
    out = tmp_path / "out"
    fails_clearly(capsys, detect_args(type(good)(optical, sar), out), bad, problem)
    assert published(out) == []
    if case != "truncated_optical":  # refused before the run: not even staging is left
        assert files_under(out) == []


def test_sar_nan_inf_and_extreme_values_are_nodata_or_clipped(good, tmp_path, capsys):
    import rasterio

    _, sar = pair_arrays(96, 128)
    sar[0, :, 0:8] = np.nan
    sar[0, :, 8:16] = np.inf
    sar[0, :, 16:24] = -np.inf
    sar[0, :, 24:32] = 1e30  # extreme but finite: clipped to the dB range, still valid
    sar[0, :, 32:40] = -5.0  # negative linear power: floored, still valid
    sar[0, :, 40:48] = 1e-38
    path = write_raster(tmp_path / "naninf.tif", sar)
    out = tmp_path / "out"
    assert main(detect_args(type(good)(good.optical, path), out)) == 0, capsys.readouterr().err
    with rasterio.open(out / "change_prob.tif") as src:
        prob = src.read(1)
    with rasterio.open(out / "change_mask.tif") as src:
        mask = src.read(1)
    assert (mask[:, :24] == 255).all() and np.isnan(prob[:, :24]).all()
    rest = prob[:, 24:]
    assert np.isfinite(rest).all() and (rest >= 0).all() and (rest <= 1).all()
    assert set(np.unique(mask[:, 24:])) <= {0, 1}


def _huge_vrt(path: Path, size: int) -> str:
    """A header-only raster of size×size pixels (a VRT without sources: no pixel exists on disk)."""
    path.write_text(
        f'<VRTDataset rasterXSize="{size}" rasterYSize="{size}">'
        '<VRTRasterBand dataType="UInt16" band="1"/><VRTRasterBand dataType="UInt16" band="2"/>'
        '<VRTRasterBand dataType="UInt16" band="3"/></VRTDataset>'
    )
    return str(path)


def test_dimensions_beyond_the_limit_are_refused_before_any_allocation(good, tmp_path, capsys):
    from pipeline.io.scene import open_scene

    huge = _huge_vrt(tmp_path / "huge.vrt", 100_000)  # 10^10 px > default max_pixels (2.5·10^9)
    tracemalloc.start()
    with pytest.raises(InputError, match="exceeds max_pixels"):
        open_scene(huge, "optical", load_detect_config("default"))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 8 * 2**20  # a 10^10-pixel array would be 60 GB
    out = tmp_path / "out"
    fails_clearly(capsys, detect_args(type(good)(huge, good.sar), out), huge, "max_pixels")
    # a configured limit applies the same way to an ordinary file
    args = detect_args(good, out, "--set", "max_pixels=1000")
    fails_clearly(capsys, args, good.optical, "96×128 = 12288 pixels exceeds max_pixels = 1000")
    assert files_under(out) == []


def test_real_console_script_prints_no_traceback(good, tmp_path):
    proc = run_cli(detect_args(type(good)(str(tmp_path / "gone.tif"), good.sar), tmp_path / "out"))
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {tmp_path / 'gone.tif'}: file not found"
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# S3: missing object, missing bucket, wrong credentials (seaweedfs enforces them)


@pytest.fixture
def s3_pair(s3_env, good):
    bucket = s3_env.bucket()
    fs = s3_env.filesystem()
    for path in (good.optical, good.sar):
        fs.put_file(path, f"{bucket}/in/{Path(path).name}")
    return bucket, type(good)(f"s3://{bucket}/in/optical.tif", f"s3://{bucket}/in/sar.tif")


@pytest.mark.s3
def test_missing_s3_object_and_bucket(s3_pair, capsys):
    bucket, pair = s3_pair
    out = f"s3://{bucket}/out/missing"
    gone = f"s3://{bucket}/in/nope.tif"
    fails_clearly(capsys, detect_args(type(pair)(gone, pair.sar), out), gone, "not found")
    no_bucket = "s3://m2cd-no-such-bucket/in/optical.tif"
    fails_clearly(capsys, detect_args(type(pair)(no_bucket, pair.sar), out), no_bucket, "not found")


@pytest.mark.s3
def test_output_to_a_missing_bucket_fails_clearly(s3_pair, capsys):
    _, pair = s3_pair
    out = "s3://m2cd-no-such-bucket/out"
    fails_clearly(capsys, detect_args(pair, out), "m2cd-no-such-bucket", "bucket")


@pytest.mark.s3
def test_wrong_credentials_fail_clearly_without_echoing_them(
    s3_pair, monkeypatch, capsys, tmp_path
):
    _, pair = s3_pair
    wrong = "Wr0ng-Secret-Zz9q-3141"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    bucket = pair.optical.split("/")[2]
    # the output bucket is checked first...
    out = f"s3://{bucket}/out/denied"
    line = fails_clearly(
        capsys, detect_args(pair, out), out, "credentials rejected", "AWS_SECRET_ACCESS_KEY"
    )
    assert wrong not in line
    # ...then each input (here with a local output)
    local = tmp_path / "out"
    line = fails_clearly(capsys, detect_args(pair, local), pair.optical, "credentials")
    assert wrong not in line and files_under(local) == []
