"""pipeline.io.grid: same-grid pass-through, SAR warped onto the optical grid window by window,
non-overlap and one-sided-CRS errors (real Sentinel-2/Sentinel-1 rasters on different grids)."""

from __future__ import annotations

import glob
import warnings

import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling
from rasterio.warp import reproject

from pipeline.config import DetectConfig, load_detect_config
from pipeline.errors import InputError
from pipeline.geometry import PixelBox
from pipeline.io.grid import GridInfo, align_pair, same_grid
from pipeline.io.normalize import valid_mask
from pipeline.io.scene import open_scene, stack_bands
from pipeline.synth import SynthSpec, synth_pair

CFG = DetectConfig()


@pytest.fixture(scope="module")
def norcia(real_data, tmp_path_factory):
    folder = real_data / "oscd_norcia_s2pre_s1post_georef_nolabels"
    files = [
        glob.glob(str(folder / f"S2_imgs_1_*_{b}.tif"))[0] for b in ("B04", "B03", "B02", "B08")
    ]
    vrt = stack_bands(files, tmp_path_factory.mktemp("norcia") / "s2_pre.vrt")
    return vrt, folder / "S1_t2_sentinel1_norcia_117_t2.tif"


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("grid_synth")
    utm = synth_pair(root / "utm", SynthSpec(size=(200, 260), seed=1))
    geo = synth_pair(root / "geo", SynthSpec(size=(200, 260), seed=1, crs="EPSG:4326"))
    return utm, geo


def test_same_grid_goes_straight_on(pairs):
    for pair in pairs:
        opt, sar = open_scene(pair.optical, "optical", CFG), open_scene(pair.sar, "sar", CFG)
        aligned = align_pair(opt, sar, CFG)
        assert aligned.resampling is None and aligned.sar is sar and not aligned.reprojected
        assert aligned.grid == GridInfo.of(opt)


def test_real_s2_s1_different_grids_are_aligned(norcia):
    vrt, s1 = norcia
    opt, sar = open_scene(vrt, "optical", CFG), open_scene(s1, "sar", CFG)
    assert not same_grid(opt, sar)
    aligned = align_pair(opt, sar, CFG)
    assert aligned.resampling == "bilinear"
    warped = aligned.sar
    assert (warped.crs, warped.transform, warped.shape) == (opt.crs, opt.transform, opt.shape)
    full = warped.read_window(PixelBox.full(opt.shape))
    # the whole-scene GDAL reprojection with the same settings agrees with the windowed warp
    with rasterio.open(s1) as src:
        expected = np.zeros((1, *opt.shape), np.float32)
        reproject(
            src.read(),
            expected,
            src_transform=src.transform,
            src_crs=src.crs,
            dst_transform=opt.transform,
            dst_crs=opt.crs,
            resampling=Resampling.bilinear,
            src_nodata=0,
            dst_nodata=0,
        )
    np.testing.assert_allclose(full, expected, atol=0.02)
    assert abs(float(full.mean()) - float(expected.mean())) < 1e-3
    # S1 covers the whole S2 footprint: every pixel is valid SAR
    assert (full > 0).all()


def test_warped_windows_are_identical_whatever_the_cut(norcia):
    vrt, s1 = norcia
    cfg = load_detect_config({"grid": {"resampling": "bilinear"}})
    aligned = align_pair(open_scene(vrt, "optical", cfg), open_scene(s1, "sar", cfg), cfg)
    full = aligned.sar.read_window(PixelBox(0, 241, 0, 385))
    for step in ((64, 96), (50, 70)):
        rows = []
        for r in range(0, 241, step[0]):
            rows.append(
                np.concatenate(
                    [
                        aligned.sar.read_window(
                            PixelBox(r, min(r + step[0], 241), c, min(c + step[1], 385))
                        )
                        for c in range(0, 385, step[1])
                    ],
                    axis=2,
                )
            )
        np.testing.assert_array_equal(np.concatenate(rows, axis=1), full)
    np.testing.assert_array_equal(aligned.sar.data.values, full)


def test_outside_the_sar_footprint_is_fill_and_invalid(pairs, tmp_path):
    utm, _ = pairs
    # a SAR scene covering only the western half of the optical one, on a coarser grid
    with rasterio.open(utm.sar) as src:
        data = src.read(window=((0, 200), (0, 130)))[:, ::2, ::2]
        t = src.transform
        profile = src.profile | {
            "width": data.shape[2],
            "height": data.shape[1],
            "transform": rasterio.Affine(t.a * 2, 0, t.c, 0, t.e * 2, t.f),
            "tiled": False,
        }
        profile.pop("blockxsize"), profile.pop("blockysize")
    half = tmp_path / "half.tif"
    with rasterio.open(half, "w", **profile) as dst:
        dst.write(data)
    cfg = load_detect_config({"grid": {"resampling": "nearest"}})
    opt = open_scene(utm.optical, "optical", cfg)
    aligned = align_pair(opt, open_scene(half, "sar", cfg), cfg)
    assert aligned.resampling == "nearest"
    win = PixelBox(0, 200, 0, 260)
    sar = aligned.sar.read_window(win)
    mask = valid_mask(opt.read_window(win), sar, opt.nodata, aligned.sar.nodata)
    assert mask[:, :120].all() and not mask[:, 140:].any()
    np.testing.assert_array_equal(sar[:, 0:200:2, 0:120:2], data[:, :, :60])


def test_scenes_that_do_not_overlap_fail_naming_both(pairs):
    utm, geo = pairs  # UTM 33N near 15°E 43°N vs a lon/lat scene at 13°E 42.9°N
    opt = open_scene(utm.optical, "optical", CFG)
    sar = open_scene(geo.sar, "sar", CFG)
    with pytest.raises(InputError, match="do not overlap") as err:
        align_pair(opt, sar, CFG)
    msg = str(err.value)
    assert str(utm.optical) in msg and str(geo.sar) in msg and "EPSG:4326" in msg


def test_crs_on_one_side_only_fails_naming_both(real_data, norcia):
    _, s1 = norcia
    png = real_data / "yellow_river_sar2opt" / "t2.png"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = open_scene(png, "optical", CFG)
    with pytest.raises(InputError, match="only one has a CRS") as err:
        align_pair(opt, open_scene(s1, "sar", CFG), CFG)
    assert str(png) in str(err.value) and str(s1) in str(err.value)


def test_plain_images_same_size_pass_and_different_sizes_fail(real_data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = open_scene(real_data / "shuguang_sar2opt" / "t2.png", "optical", CFG)
        b = open_scene(real_data / "shuguang_sar2opt" / "t1.png", "sar", CFG)
        c = open_scene(real_data / "yellow_river_sar2opt" / "t1.png", "sar", CFG)
    assert align_pair(a, b, CFG).resampling is None
    with pytest.raises(InputError, match="plain images must have the same size"):
        align_pair(a, c, CFG)


def test_south_up_sar_is_flipped_onto_a_north_up_optical(pairs, tmp_path):
    utm, _ = pairs
    with rasterio.open(utm.sar) as src:
        data, t, profile = src.read(), src.transform, src.profile
    # the same pixels stored bottom row first, with a positive y pixel size
    south_up = rasterio.Affine(t.a, 0, t.c, 0, -t.e, t.f + t.e * data.shape[1])
    profile = profile | {"transform": south_up}
    path = tmp_path / "south_up.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data[:, ::-1, :])
    cfg = load_detect_config({"grid": {"resampling": "nearest"}})
    opt = open_scene(utm.optical, "optical", cfg)
    aligned = align_pair(opt, open_scene(path, "sar", cfg), cfg)
    assert aligned.reprojected
    np.testing.assert_array_equal(aligned.sar.read_window(PixelBox(0, 200, 0, 260)), data)


def test_scenes_pickle_for_workers(norcia):
    import pickle

    vrt, s1 = norcia
    aligned = align_pair(open_scene(vrt, "optical", CFG), open_scene(s1, "sar", CFG), CFG)
    _ = aligned.sar.data, aligned.optical.data  # cached lazy arrays are not pickled
    copy = pickle.loads(pickle.dumps(aligned))
    win = PixelBox(-4, 60, 300, 390)
    np.testing.assert_array_equal(copy.sar.read_window(win), aligned.sar.read_window(win))
    np.testing.assert_array_equal(copy.optical.read_window(win), aligned.optical.read_window(win))
    assert copy.resampling == "bilinear" and copy.sar.scale == aligned.sar.scale
