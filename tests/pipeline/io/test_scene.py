"""pipeline.io.scene: lazy opening, boundless window reads, band choice, errors (real rasters)."""

from __future__ import annotations

import glob
import warnings

import numpy as np
import pytest
import rasterio
from affine import Affine

from pipeline.config import DetectConfig, load_detect_config
from pipeline.errors import InputError
from pipeline.geometry import PixelBox
from pipeline.io import storage
from pipeline.io.normalize import valid_mask
from pipeline.io.scene import open_scene, stack_bands
from pipeline.synth import SynthSpec, synth_pair

CFG = DetectConfig()


@pytest.fixture(scope="module")
def synth_utm(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth_utm")
    return synth_pair(out, SynthSpec(size=(300, 420), seed=5, nodata_strip=0.1))


@pytest.fixture
def s1_db(real_data):
    return real_data / "sen1floods11_spain7370579_s1s2_georef" / "Spain_7370579_S1Hand.tif"


def test_real_s1_db_header_and_units(s1_db):
    scene = open_scene(s1_db, "sar", CFG)
    assert scene.crs.to_epsg() == 4326
    assert scene.shape == (512, 512) and scene.count == 2 and scene.bands == [1, 2]
    assert scene.dtype == "float32" and np.isnan(scene.nodata)
    assert scene.units == "db"  # the auto rule on real dB backscatter


def test_boundless_read_at_every_edge_matches_the_file(s1_db):
    scene = open_scene(s1_db, "sar", CFG)
    with rasterio.open(s1_db) as src:
        full = src.read()
    for win in (PixelBox(-7, 9, -5, 11), PixelBox(500, 530, 490, 520), PixelBox(-3, 515, 200, 210)):
        got = scene.read_window(win)
        assert got.shape == (2, win.height, win.width)
        inner = win.clip(scene.shape)
        r, c = inner.y0 - win.y0, inner.x0 - win.x0
        np.testing.assert_array_equal(
            got[:, r : r + inner.height, c : c + inner.width],
            full[:, inner.y0 : inner.y1, inner.x0 : inner.x1],
        )
        outside = np.ones(win.shape, bool)
        outside[r : r + inner.height, c : c + inner.width] = False
        assert np.isnan(got[:, outside]).all()  # filled with the file's nodata (NaN)
    assert np.isnan(scene.read_window(PixelBox(600, 610, 0, 10))).all()  # fully outside


def test_fill_is_never_valid(synth_utm):
    opt = open_scene(synth_utm.optical, "optical", CFG)
    sar = open_scene(synth_utm.sar, "sar", CFG)
    assert opt.nodata == 0 and sar.nodata is None and sar.units == "linear"
    win = PixelBox(-16, 16, 400, 440)  # straddles the north-east corner
    mask = valid_mask(opt.read_window(win), sar.read_window(win), opt.nodata, sar.nodata)
    assert not mask[:16].any() and not mask[:, 20:].any()


def test_lazy_data_is_chunked_on_file_blocks_and_equals_reads(synth_utm):
    scene = open_scene(synth_utm.optical, "optical", CFG)
    data = scene.data
    assert data.dims == ("band", "y", "x") and data.shape == (3, 300, 420)
    bh, bw = scene.block_shape
    assert all(c % bh == 0 for c in data.chunks[1][:-1])
    assert all(c % bw == 0 for c in data.chunks[2][:-1])
    np.testing.assert_array_equal(data.values, scene.read_window(PixelBox.full(scene.shape)))
    assert data.rio.crs == scene.crs
    # pixel-centre coordinates come from the transform
    assert data.x.values[0] == pytest.approx(scene.transform.c + scene.transform.a / 2)


def test_optical_band_choice(real_data):
    s2 = real_data / "sen1floods11_spain7370579_s1s2_georef" / "Spain_7370579_S2Hand.tif"
    assert open_scene(s2, "optical", CFG).bands == [1, 2, 3]
    cfg = load_detect_config({"optical": {"bands": [4, 3, 2]}})
    scene = open_scene(s2, "optical", cfg)
    with rasterio.open(s2) as src:
        expected = src.read([4, 3, 2], window=((10, 20), (30, 40)))
    np.testing.assert_array_equal(scene.read_window(PixelBox(10, 20, 30, 40)), expected)
    with pytest.raises(InputError, match=r"Spain_7370579_S2Hand\.tif: optical bands \[14\]"):
        open_scene(s2, "optical", load_detect_config({"optical": {"bands": [14]}}))
    with pytest.raises(InputError, match="SAR has 13 bands"):
        open_scene(s2, "sar", CFG)


def test_nodata_override_from_config(s1_db):
    scene = open_scene(s1_db, "sar", load_detect_config({"sar": {"nodata": -9999}}))
    assert scene.nodata == -9999
    assert (scene.read_window(PixelBox(-2, 0, 0, 3)) == -9999).all()


def test_plain_png_pair_is_accepted_with_a_warning(real_data):
    with pytest.warns(UserWarning, match="no CRS"):
        opt = open_scene(real_data / "shuguang_sar2opt" / "t2.png", "optical", CFG)
    with pytest.warns(UserWarning, match="no CRS"):
        sar = open_scene(real_data / "shuguang_sar2opt" / "t1.png", "sar", CFG)
    assert opt.crs is None and sar.crs is None
    assert opt.transform == Affine.identity() and opt.shape == (593, 921)
    assert opt.bands == [1, 2, 3] and sar.bands == [1] and sar.units == "amplitude"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reads do not warn again
        assert opt.read_window(PixelBox(0, 4, 0, 4)).shape == (3, 4, 4)


def test_single_band_optical(real_data):
    with pytest.warns(UserWarning):
        scene = open_scene(real_data / "italy_sardinia_opt2opt" / "t1.png", "optical", CFG)
    assert scene.bands == [1] and scene.count == 1


def test_input_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.tif"
    with pytest.raises(InputError, match=r"nope\.tif: file not found"):
        open_scene(missing, "optical", CFG)
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match=r"empty\.tif: empty file"):
        open_scene(empty, "sar", CFG)
    corrupt = tmp_path / "corrupt.tif"
    corrupt.write_bytes(b"II*\x00" + bytes(range(256)) * 4)
    with pytest.raises(InputError, match=r"corrupt\.tif: not a readable raster"):
        open_scene(corrupt, "sar", CFG)
    with pytest.raises(InputError, match="is a directory"):
        open_scene(tmp_path, "sar", CFG)


def test_max_pixels_refused_from_the_header(synth_utm):
    cfg = load_detect_config({"max_pixels": 300 * 420 - 1})
    with pytest.raises(InputError, match=r"optical\.tif: 300×420 = 126000 pixels exceeds"):
        open_scene(synth_utm.optical, "optical", cfg)


def test_stack_bands_builds_a_multiband_optical(real_data, tmp_path):
    folder = real_data / "oscd_norcia_s2pre_s1post_georef_nolabels"
    files = [
        glob.glob(str(folder / f"S2_imgs_1_*_{b}.tif"))[0] for b in ("B04", "B03", "B02", "B08")
    ]
    vrt = stack_bands(files, tmp_path / "s2.vrt")
    scene = open_scene(vrt, "optical", CFG)
    assert scene.count == 4 and scene.bands == [1, 2, 3] and scene.dtype == "uint16"
    assert scene.shape == (241, 385) and scene.crs.to_epsg() == 4326
    got = scene.read_window(PixelBox(100, 120, 200, 230))
    for i, f in enumerate(files[:3]):
        with rasterio.open(f) as src:
            np.testing.assert_array_equal(got[i], src.read(1, window=((100, 120), (200, 230))))
    s1 = folder / "S1_t1_sentinel1_norcia_117_t1.tif"
    with pytest.raises(InputError, match="not on the grid"):
        stack_bands([files[0], str(s1)], tmp_path / "bad.vrt")


@pytest.mark.s3
def test_s3_round_trip_open_and_read(s3_env, synth_utm):
    bucket = s3_env.bucket()
    uris = {}
    for name, path in (("optical", synth_utm.optical), ("sar", synth_utm.sar)):
        uris[name] = f"s3://{bucket}/scenes/{path.name}"
        storage.put_file_atomic(path, uris[name])
    win = PixelBox(250, 310, 380, 430)  # crosses the south-east corner
    for role, uri in uris.items():
        remote = open_scene(uri, role, CFG)
        local = open_scene(getattr(synth_utm, role), role, CFG)
        assert (remote.crs, remote.transform, remote.shape) == (
            local.crs,
            local.transform,
            local.shape,
        )
        assert remote.units == local.units
        np.testing.assert_array_equal(remote.read_window(win), local.read_window(win))
        np.testing.assert_array_equal(
            remote.data[:, :40, :40].values, local.data[:, :40, :40].values
        )
    with pytest.raises(InputError) as err:
        open_scene(f"s3://{bucket}/scenes/missing.tif", "sar", CFG)
    assert "missing.tif: file not found" in str(err.value)
    assert s3_env.secret_key not in str(err.value)


@pytest.mark.s3
def test_s3_refused_credentials_are_an_input_error(s3_env, synth_utm, monkeypatch):
    uri = f"s3://{s3_env.bucket()}/scenes/sar.tif"
    storage.put_file_atomic(synth_utm.sar, uri)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(InputError, match=r"sar\.tif: cannot access") as err:
        open_scene(uri, "sar", CFG)
    assert "not-the-secret" not in str(err.value) and s3_env.secret_key not in str(err.value)


@pytest.mark.s3
def test_s3_band_stack_vrt(s3_env, synth_utm, tmp_path):
    bucket = s3_env.bucket()
    with rasterio.open(synth_utm.optical) as src:
        profile = src.profile | {"count": 1}
        bands = src.read()
    uris = []
    for i in range(4):
        local = tmp_path / f"B{i}.tif"
        with rasterio.open(local, "w", **profile) as dst:
            dst.write(bands[i], 1)
        uris.append(f"s3://{bucket}/bands/B{i}.tif")
        storage.put_file_atomic(local, uris[-1])
    vrt = stack_bands(uris[::-1], f"s3://{bucket}/bands/stack.vrt")
    scene = open_scene(vrt, "optical", load_detect_config({"optical": {"bands": [1, 4]}}))
    assert scene.count == 4 and scene.nodata == 0
    got = scene.read_window(PixelBox(-5, 40, 10, 50))
    np.testing.assert_array_equal(got[:, 5:], bands[[3, 0], 0:40, 10:50])
