"""Training and evaluation check grids, not shapes (issue 15 point 5), and the label encoding is
decided once per file.

Data-level checks call `pipeline.training.data` directly (the loader `m2cd train` uses); the CLI
cases run `flows.cli.main` in-process (the console script's entry point, ~20 s of imports cheaper
per case than a subprocess on the shared 2 cores).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.warp import Resampling, calculate_default_transform, reproject

from flows.cli import main
from pipeline.config import DetectConfig
from pipeline.errors import InputError
from pipeline.training.config import SceneSource
from pipeline.training.data import IGNORE, load_scene_areas, read_pair
from tests.reliability.support import (
    one_error_line,
    pair_arrays,
    run_main,
    write_raster,
)

CFG = DetectConfig()
H, W = 64, 240
X0, Y0 = 500_000.0, 4_600_000.0


def _grid(dx_px: float = 0.0) -> Affine:
    return Affine(10.0, 0, X0 + 10.0 * dx_px, 0, -10.0, Y0)


def _label_array() -> np.ndarray:
    """0/1 label with 255 = ignore: change in columns 20..60 and 210..230, an ignore strip."""
    lab = np.zeros((1, H, W), np.uint8)
    lab[:, 10:30, 20:60] = 1
    lab[:, 40:50, 210:230] = 1
    lab[:, :4, :] = 255
    return lab


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    d = tmp_path_factory.mktemp("scene")
    optical, sar = pair_arrays(H, W)
    return {
        "dir": d,
        "optical": write_raster(d / "optical.tif", optical, transform=_grid()),
        "sar": write_raster(d / "sar.tif", sar, transform=_grid()),
        "sar_arr": sar,
        "label": write_raster(d / "label.tif", _label_array(), transform=_grid()),
    }


def _areas(scene, label: str, window: str = f"0:{H},0:{W}", sar: str | None = None):
    src = SceneSource(
        optical=scene["optical"], sar=sar or scene["sar"], label=label, train=[{"window": window}]
    )
    (area,) = load_scene_areas(src, CFG, "train")
    return area


def test_a_label_shifted_200_px_is_placed_by_its_georeference(scene, tmp_path):
    lab = _label_array()
    shifted = np.full_like(lab, 0)
    shifted[:, :, : W - 200] = lab[:, :, 200:]  # its pixel c is the image's pixel c + 200
    path = write_raster(tmp_path / "shifted.tif", shifted, transform=_grid(200))
    area = _areas(scene, path)
    assert (area.label[:, :200] == IGNORE).all()  # outside the label's footprint: ignore
    np.testing.assert_array_equal(area.label[4:, 200:], lab[0, 4:, 200:])
    # by array index (the old shape check) the change would have been 200 px off
    assert area.label[10:30, 20:60].max() != 1


def test_a_label_in_epsg4326_against_a_utm_scene_is_warped_with_nearest(scene, tmp_path):
    lab = _label_array()
    dst_crs = "EPSG:4326"
    transform, w, h = calculate_default_transform(
        "EPSG:32633", dst_crs, W, H, *rasterio.transform.array_bounds(H, W, _grid())
    )
    geo = np.full((1, h, w), 255, np.uint8)
    reproject(lab, geo, src_transform=_grid(), src_crs="EPSG:32633", dst_transform=transform,
              dst_crs=dst_crs, resampling=Resampling.nearest)  # fmt: skip
    path = write_raster(tmp_path / "label_4326.tif", geo, crs=dst_crs, transform=transform)
    area = _areas(scene, path)
    assert set(np.unique(area.label)) <= {0, 1, IGNORE}  # nearest: no interpolated classes
    core = (slice(4, H - 2), slice(2, W - 2))
    agree = (area.label[core] == lab[0][core]).mean()
    assert agree > 0.97, agree


def test_sar_shifted_half_a_scene_is_warped_like_detect_and_the_rest_is_invalid(scene, tmp_path):
    sar = scene["sar_arr"]
    moved = write_raster(tmp_path / "sar_half.tif", sar, transform=_grid(W // 2))
    _, sar_in, valid, _ = read_pair(scene["optical"], moved, CFG, None)
    assert not valid[:, : W // 2].any()  # no SAR there: never trained on
    assert valid[:, W // 2 :].mean() > 0.99
    _, sar_ref, _, _ = read_pair(scene["optical"], scene["sar"], CFG, None)
    np.testing.assert_array_equal(sar_in[:, :, W // 2 :], sar_ref[:, :, : W - W // 2])
    area = _areas(scene, scene["label"], sar=moved)
    assert (area.label[:, : W // 2] == IGNORE).all()


def test_a_label_without_crs_of_another_size_is_refused(scene, tmp_path):
    path = write_raster(tmp_path / "plain.tif", _label_array()[:, :, :100], crs=None,
                        transform=Affine.identity())  # fmt: skip
    with pytest.raises(InputError, match="cannot place the label"):
        _areas(scene, path)


def test_the_encoding_is_decided_per_file_not_per_window(scene):
    # columns 80..200 hold only 0 and the 255 strip: per window that read as 0/255 (255 = change)
    area = _areas(scene, scene["label"], window=f"0:{H},80:200")
    assert (area.label[:4] == IGNORE).all() and (area.label[4:] == 0).all()


def _train_args(scene, label, out) -> list[str]:
    return ["train", "--optical", scene["optical"], "--sar", scene["sar"], "--label", str(label),
            "--train-window", f"0:{H},0:{W}", "--model", "tiny", "--device", "cpu",
            "--no-progress", "--steps", "1", "--out", str(out)]  # fmt: skip


def test_an_all_255_label_is_refused_not_trained_as_all_change(scene, tmp_path, capsys):
    path = write_raster(tmp_path / "all255.tif", np.full((1, H, W), 255, np.uint8))
    rc = main(_train_args(scene, path, tmp_path / "run"))
    one_error_line(rc, capsys.readouterr().err, path, "only 255")
    assert not (tmp_path / "run" / "last").exists()


def test_a_nan_label_is_one_line_naming_the_file(scene, tmp_path, capsys):
    lab = _label_array().astype(np.float32)
    lab[:, 30:40, 100:120] = np.nan
    path = write_raster(tmp_path / "nan.tif", lab)
    rc = main(_train_args(scene, path, tmp_path / "run"))
    one_error_line(rc, capsys.readouterr().err, path, "NaN", "nodata")


def _evaluate(capsys, *args: str) -> tuple[int, str, str]:
    return run_main(capsys, ["evaluate", *args])


def test_evaluate_places_a_shifted_label_by_georeference(scene, tmp_path, capsys):
    lab = _label_array()
    pred = write_raster(tmp_path / "pred.tif", np.where(lab == 255, 0, lab).astype(np.uint8))
    shifted = np.zeros_like(lab)
    shifted[:, :, : W - 200] = lab[:, :, 200:]
    label = write_raster(tmp_path / "label_shift.tif", shifted, transform=_grid(200))
    rc, out, err = _evaluate(capsys, "--pred", pred, "--label", label)
    assert rc == 0, err
    metrics = json.loads(out)
    assert metrics["f1"] == pytest.approx(1.0)  # the changed pixels 210..230 line up
    assert metrics["ignored_pixels"] >= H * 200  # outside the label: not scored


def test_evaluate_refuses_a_probability_raster_given_as_pred(scene, tmp_path, capsys):
    prob = np.random.default_rng(0).uniform(0, 1, (1, H, W)).astype(np.float32)
    path = write_raster(tmp_path / "change_prob.tif", prob)
    rc, _, err = _evaluate(capsys, "--pred", path, "--label", scene["label"])
    one_error_line(rc, err, path, "--prob")
