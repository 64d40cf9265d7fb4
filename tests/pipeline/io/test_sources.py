"""The inputs users have: band lists, VRTs, STAC Items, https / vsicurl / s3 / gs / az URIs, dates."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

from pipeline.config import DetectConfig, load_detect_config
from pipeline.errors import InputError
from pipeline.geometry import PixelBox
from pipeline.io import remote
from pipeline.io.scene import open_scene
from pipeline.io.sources import acquired_from_tags, fingerprint
from pipeline.synth import SynthSpec, synth_pair

CFG = DetectConfig()
REPO = Path(__file__).resolve().parents[3]
WIN = PixelBox(40, 104, 30, 94)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return synth_pair(
        tmp_path_factory.mktemp("src"), SynthSpec(size=(160, 200), seed=3, sar_bands=2)
    )


@pytest.fixture(scope="module")
def band_files(pair, tmp_path_factory):
    """The synthetic optical and SAR written one file per band, as Sentinel-2/-1 deliver them."""
    out = tmp_path_factory.mktemp("bands")
    files = {}
    for src_path, names in ((pair.optical, ("B02", "B03", "B04", "B08")), (pair.sar, ("VV", "VH"))):
        with rasterio.open(src_path) as src:
            profile = src.profile | {"count": 1}
            for i, name in enumerate(names, start=1):
                path = out / f"T33_20240501_{name}.tif"
                with rasterio.open(path, "w", **profile) as dst:
                    dst.write(src.read(i), 1)
                    dst.update_tags(TIFFTAG_DATETIME="2024:05:01 10:20:30")
                files[name] = path
    return files


def _read(path, band):
    with rasterio.open(path) as src:
        return src.read(band, window=WIN.to_rasterio())


def test_band_list_stacks_in_the_order_given_and_names_bands_after_files(band_files, pair):
    spec = ",".join(str(band_files[b]) for b in ("B08", "B02", "B03", "B04"))
    scene = open_scene(spec, "optical", CFG)
    assert scene.count == 4 and scene.uri == spec
    assert scene.band_names == tuple(f"T33_20240501_{b}" for b in ("B08", "B02", "B03", "B04"))
    got = scene.read_window(WIN)
    np.testing.assert_array_equal(got[0], _read(pair.optical, 4))  # B08 first, as given
    np.testing.assert_array_equal(got[1], _read(pair.optical, 1))
    assert scene.acquired.isoformat() == "2024-05-01T10:20:30+00:00"  # TIFFTAG_DATETIME


def test_band_list_missing_file_names_that_file(band_files, tmp_path):
    spec = f"{band_files['B02']},{tmp_path / 'B03.tif'}"
    with pytest.raises(InputError, match=r"B03\.tif: file not found"):
        open_scene(spec, "optical", CFG)


def test_band_list_on_two_grids_is_refused_by_name(band_files, pair, tmp_path):
    small = tmp_path / "B04_20m.tif"
    with rasterio.open(band_files["B04"]) as src:
        profile = src.profile | {"width": 100, "height": 80}
        with rasterio.open(small, "w", **profile) as dst:
            dst.write(src.read(1)[:80, :100], 1)
    with pytest.raises(InputError, match=r"B04_20m\.tif: 80×100 px is not on the grid of"):
        open_scene(f"{band_files['B02']},{small}", "optical", CFG)


def test_vrt_file_is_an_input(band_files, pair, tmp_path):
    from pipeline.io.scene import stack_bands

    vrt = stack_bands([str(band_files[b]) for b in ("B04", "B03", "B02")], tmp_path / "rgb.vrt")
    scene = open_scene(vrt, "optical", CFG)
    assert scene.count == 3 and scene.band_names[0].endswith("B04")
    np.testing.assert_array_equal(scene.read_window(WIN)[0], _read(pair.optical, 3))


def _item(tmp_path: Path, band_files: dict[str, Path], role: str) -> Path:
    """A STAC Item beside copies of the band files, with relative hrefs (as catalogs write them)."""
    folder = tmp_path / f"item-{role}"
    folder.mkdir()
    assets = {}
    names = ("B02", "B03", "B04", "B08") if role == "optical" else ("VV", "VH")
    common = {"B02": "blue", "B03": "green", "B04": "red", "B08": "nir"}
    for name in names:
        shutil.copy(band_files[name], folder / f"{name}.tif")
        asset = {
            "href": f"./{name}.tif",
            "type": "image/tiff; application=geotiff",
            "roles": ["data"],
        }
        if role == "optical":
            asset["eo:bands"] = [{"name": name, "common_name": common[name]}]
            assets[name] = asset
        else:
            assets[name.lower()] = asset | {"sar:polarizations": [name]}
    # an 8-bit "visual" asset that also holds red: the single-band asset must win
    assets["visual"] = {
        "href": "./B02.tif",
        "type": "image/tiff",
        "eo:bands": [{"common_name": "red"}, {"common_name": "green"}, {"common_name": "blue"}],
    }
    assets["thumbnail"] = {"href": "./thumb.png", "type": "image/png"}
    item = {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": f"scene-{role}",
        "geometry": None,
        "properties": {
            "datetime": "2024-05-01T10:00:00Z" if role == "optical" else "2024-05-09T05:30:00Z"
        },
        "assets": assets,
        "links": [],
    }
    path = folder / "item.json"
    path.write_text(json.dumps(item))
    return path


def test_stac_item_assets_picked_by_common_name_with_its_datetime(band_files, pair, tmp_path):
    scene = open_scene(_item(tmp_path, band_files, "optical"), "optical", CFG)
    assert scene.band_names == ("blue", "green", "red", "nir") and scene.count == 4
    np.testing.assert_array_equal(scene.read_window(WIN)[2], _read(pair.optical, 3))  # red = B04
    assert scene.acquired.isoformat() == "2024-05-01T10:00:00+00:00"
    sar = open_scene(_item(tmp_path, band_files, "sar"), "sar", CFG)
    assert sar.band_names == ("vv", "vh") and sar.count == 2


def test_stac_item_without_matching_assets_lists_them(tmp_path):
    path = tmp_path / "item.json"
    path.write_text(json.dumps({"type": "Feature", "id": "x", "assets": {"a": {"href": "a.png"}}}))
    with pytest.raises(
        InputError, match=r"item.json: item 'x' has no sar raster asset .* assets: a"
    ):
        open_scene(path, "sar", CFG)


def test_https_and_vsicurl_read_with_range_requests(http_range_server, band_files, pair):
    www = http_range_server.root
    shutil.copy(pair.optical, www / "optical.tif")
    size = (www / "optical.tif").stat().st_size
    url = f"{http_range_server.url}/optical.tif?token=SIGNED-SECRET-123"
    local = open_scene(pair.optical, "optical", CFG)
    for spec in (url, f"/vsicurl/{url}"):
        scene = open_scene(spec, "optical", CFG)
        assert (scene.shape, scene.crs, scene.count) == (local.shape, local.crs, local.count)
        np.testing.assert_array_equal(scene.read_window(WIN), local.read_window(WIN))
    assert http_range_server.ranges > 0  # GDAL asked for byte ranges and got 206s
    assert fingerprint(url, "optical")["size"] == size  # HEAD through fsspec: size + ETag
    with pytest.raises(InputError) as err:
        open_scene(f"{http_range_server.url}/missing.tif?token=SIGNED-SECRET-123", "optical", CFG)
    assert "missing.tif" in str(err.value) and "SIGNED-SECRET" not in str(err.value)


def test_band_list_over_https(http_range_server, band_files, pair):
    for name in ("VV", "VH"):
        shutil.copy(band_files[name], http_range_server.root / f"{name}.tif")
    spec = f"{http_range_server.url}/VV.tif,{http_range_server.url}/VH.tif"
    scene = open_scene(spec, "sar", CFG)
    assert scene.band_names == ("VV", "VH")
    np.testing.assert_array_equal(scene.read_window(WIN)[1], _read(pair.sar, 2))


def test_gs_and_az_map_to_gdal_and_fail_in_one_line_naming_the_uri():
    assert remote.gdal_path("gs://bucket/a/b.tif") == "/vsigs/bucket/a/b.tif"
    assert remote.gdal_path("az://container/b.tif") == "/vsiaz/container/b.tif"
    assert remote.gdal_path("s3://b/k.tif") == "/vsis3/b/k.tif"
    assert remote.gdal_path("https://h/k.tif") == "/vsicurl/https://h/k.tif"
    assert remote.gdal_path("/vsicurl/https://h/k.tif") == "/vsicurl/https://h/k.tif"
    for uri in ("gs://m2cd-no-such-bucket/pre.tif", "az://m2cd-none/pre.tif"):
        with pytest.raises(InputError) as err:
            open_scene(uri, "optical", CFG)
        assert str(err.value).startswith(f"{uri}: ") and "\n" not in str(err.value)
    with pytest.raises(InputError, match="unsupported URI scheme 'ftp'"):
        open_scene("ftp://h/x.tif", "optical", CFG)


def test_redaction_drops_signatures_and_userinfo():
    assert remote.redact_uri("https://u:p@h/x.tif?X-Amz-Signature=abc&b=1") == "https://h/x.tif"
    assert remote.redact_uri("https://h/x.tif?version=2") == "https://h/x.tif?version=2"
    text = "CURL error on /vsicurl/https://h/x.tif?sig=abc: 404"
    assert "sig=abc" not in remote.redact_text(text) and "https://h/x.tif" in remote.redact_text(
        text
    )


def test_acquisition_tags():
    assert (
        acquired_from_tags({"ACQUISITION_DATE": "2023-07-02"}).isoformat().startswith("2023-07-02")
    )
    assert acquired_from_tags({"TIFFTAG_DATETIME": "2024:01:02 03:04:05"}).hour == 3
    assert acquired_from_tags({"TIFFTAG_DATETIME": "garbage"}) is None


def test_model_bands_picked_by_name_from_a_sentinel2_band_list(band_files, tmp_path):
    """The shipped model was trained on red, green, blue and VV: B02..B08 and VV,VH reach it as
    bands [3, 2, 1] and [1], with no --set."""
    from pipeline.engine.models import describe_model
    from pipeline.engine.pair import for_model, open_pair
    from pipeline.engine.request import DetectRequest

    opt = ",".join(str(band_files[b]) for b in ("B02", "B03", "B04", "B08"))
    sar = f"{band_files['VV']},{band_files['VH']}"
    req = DetectRequest(optical=opt, sar=sar, out=str(tmp_path / "o"))
    cfg, pair = for_model(
        req.config, open_pair(opt, sar, req.config), describe_model(req.checkpoint, None)
    )
    assert cfg.optical.bands == [3, 2, 1] and cfg.sar.bands == [1]
    assert pair.optical.bands == [3, 2, 1] and pair.sar.bands == [1]
    explicit = load_detect_config({"optical": {"bands": [1, 2, 3]}})
    cfg, _ = for_model(
        explicit, open_pair(opt, sar, explicit), describe_model(req.checkpoint, None)
    )
    assert cfg.optical.bands == [1, 2, 3]  # an explicit choice wins


@pytest.mark.slow
def test_cli_detect_band_lists_https_dates_and_no_secret_echoed(
    http_range_server, band_files, tiny_checkpoint, tmp_path
):
    """`m2cd detect B02,B03,B04,B08 https://…/VV.tif?token=… --pre-date …`: products, dates in the
    STAC Item, and the token in no output and not in run.json."""
    for name in ("VV", "VH"):
        shutil.copy(band_files[name], http_range_server.root / f"{name}.tif")
    opt = ",".join(str(band_files[b]) for b in ("B04", "B03", "B02"))
    sar = f"{http_range_server.url}/VV.tif?token=SIGNED-SECRET-123"
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "flows.cli", "detect", opt, sar, "--out", str(out)]
    cmd += ["--checkpoint", str(tiny_checkpoint), "--no-progress", "--post-date", "2024-05-09"]
    cmd += ["--tile", "64", "--overlap", "16", "--block", "128"]
    env = {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "SIGNED-SECRET" not in done.stdout + done.stderr
    run_json = (out / "run.json").read_text()
    assert (
        "SIGNED-SECRET" not in run_json and "SIGNED-SECRET" not in (out / "item.json").read_text()
    )
    props = json.loads((out / "item.json").read_text())["properties"]
    assert props["start_datetime"] == "2024-05-01T10:20:30Z"  # TIFFTAG_DATETIME of the bands
    assert props["end_datetime"] == "2024-05-09T00:00:00Z"  # --post-date
