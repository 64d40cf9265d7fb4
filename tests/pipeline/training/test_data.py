"""Training data: CAU-Flood folder layouts, the label rule, scene windows, augmentation alignment."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.transform import from_origin

from pipeline.config import DetectConfig
from pipeline.errors import InputError
from pipeline.training.augment import (
    augment,
    geometric,
    optical_photometric,
    rotate,
    sar_radiometric,
)
from pipeline.training.config import AugmentConfig, SceneSource
from pipeline.training.data import (
    IGNORE,
    LabelledArea,
    decode_label,
    label_encoding,
    load_folder_areas,
    load_scene_areas,
)
from pipeline.training.sampling import ChipSampler

CFG = DetectConfig()


def _png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _tile(rng: np.random.Generator, bands: int, size: int = 24) -> np.ndarray:
    shape = (size, size, bands) if bands > 1 else (size, size)
    return rng.integers(1, 255, shape, dtype=np.uint8)


def _label(size: int = 24, hi: int = 1) -> np.ndarray:
    lab = np.zeros((size, size), np.uint8)
    lab[4:12, 6:18] = hi
    return lab


def test_ab_label_layout_loads_with_01_labels_and_255_ignore(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in ("t1", "t2"):
            _png(tmp_path / split / "A" / f"{name}.png", _tile(rng, 3))
            _png(tmp_path / split / "B" / f"{name}.png", _tile(rng, 1))
            lab = _label()
            lab[0, :5] = 255  # unlabelled
            _png(tmp_path / split / "label" / f"{name}.png", lab)
    areas = load_folder_areas(tmp_path, "train", CFG)
    assert [a.name for a in areas] == ["t1", "t2"]
    a = areas[0]
    assert a.optical.shape == (3, 24, 24) and a.sar.shape == (1, 24, 24)
    assert a.optical.dtype == np.float32 and a.sar.dtype == np.float32
    assert (a.label[4:12, 6:18] == 1).all()
    assert (a.label[0, :5] == IGNORE).all()
    assert set(np.unique(a.label)) == {0, 1, IGNORE}


def test_release_layout_opt_vv_flood_vv_with_0_255_labels(tmp_path):
    rng = np.random.default_rng(1)
    _png(tmp_path / "train" / "opt" / "p1_0001.png", _tile(rng, 4))  # 4-band optical as released
    _png(tmp_path / "train" / "vv" / "p1_0001.png", _tile(rng, 1))
    _png(tmp_path / "train" / "flood_vv" / "p1_0001.png", _label(hi=255))
    (area,) = load_folder_areas(tmp_path, "train", CFG)
    assert area.optical.shape == (3, 24, 24)  # first three bands, as inference reads it
    assert area.label.sum() == 8 * 12 and set(np.unique(area.label)) == {0, 1}


def test_folder_errors_name_the_file(tmp_path):
    rng = np.random.default_rng(2)
    _png(tmp_path / "train" / "A" / "x.png", _tile(rng, 3))
    _png(tmp_path / "train" / "B" / "y.png", _tile(rng, 1))
    _png(tmp_path / "train" / "label" / "x.png", _label())
    with pytest.raises(InputError, match=r"x\.png.*no matching tile"):
        load_folder_areas(tmp_path, "train", CFG)
    with pytest.raises(InputError, match="no CAU-Flood layout"):
        load_folder_areas(tmp_path / "train", "A", CFG)


def test_label_rule():
    assert label_encoding([0, 1, 255], "l") == "0/1"
    assert label_encoding([0, 255], "l") == "0/255"
    assert label_encoding([0], "l") == "0/255"
    with pytest.raises(InputError, match="neither 0/1"):
        label_encoding([0, 128, 255], "gt.png")
    raw = np.array([[0, 1, 255]], np.uint8)
    assert decode_label(raw, "0/1").tolist() == [[0, 1, IGNORE]]
    assert decode_label(np.array([[0, 255]], np.uint8), "0/255").tolist() == [[0, 1]]
    # a declared nodata value is ignore, whatever the encoding
    assert decode_label(np.array([[0, 255, 7]], np.uint8), "0/255", nodata=7).tolist() == [
        [0, 1, IGNORE]
    ]


def _tif(path: Path, arr: np.ndarray, nodata=None) -> str:
    arr = arr if arr.ndim == 3 else arr[None]
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        height=arr.shape[1],
        width=arr.shape[2],
        count=arr.shape[0],
        dtype=arr.dtype,
        crs="EPSG:32633",
        transform=from_origin(500000, 4000000, 10, 10),
        nodata=nodata,
    ) as dst:
        dst.write(arr)
    return str(path)


def test_scene_windows_and_bounds_use_the_inference_valid_mask(tmp_path):
    rng = np.random.default_rng(3)
    opt = rng.integers(100, 3000, (3, 40, 50), dtype=np.uint16)
    sar = rng.uniform(0.01, 0.3, (1, 40, 50)).astype(np.float32)
    sar[:, :, :5] = 0  # SAR zero fill on the west edge -> invalid -> ignore
    lab = np.zeros((40, 50), np.uint8)
    lab[10:20, 10:30] = 1
    src = SceneSource(
        optical=_tif(tmp_path / "o.tif", opt),
        sar=_tif(tmp_path / "s.tif", sar),
        label=_tif(tmp_path / "l.tif", lab),
        train=[{"window": "0:30,0:40"}],
        # bounds of rows 30:40, cols 10:50 in the scene CRS (10 m pixels)
        val=[{"bounds": (500100, 4000000 - 400, 500500, 4000000 - 300)}],
    )
    (train,) = load_scene_areas(src, CFG, "train")
    assert train.shape == (30, 40)
    assert (train.label[:, :5] == IGNORE).all() and (train.optical[:, :, :5] == 0).all()
    assert (train.label[10:20, 10:30] == 1).all()
    (val,) = load_scene_areas(src, CFG, "val")
    assert val.shape == (10, 40)


def _aligned_chip(rng: np.random.Generator, size: int = 16):
    lab = rng.integers(0, 2, (size, size)).astype(np.uint8)
    opt = np.stack([lab * 1.0, lab * 2.0, lab * 3.0]).astype(np.float32)
    sar = (lab * -1.0)[None].astype(np.float32)
    return opt, sar, lab


def test_geometric_augmentation_keeps_images_and_label_aligned():
    rng = np.random.default_rng(4)
    cfg = AugmentConfig(flip=True, rot90=True)
    seen = set()
    for _ in range(40):
        chip = _aligned_chip(rng)
        opt, sar, lab = geometric(chip, cfg, rng)
        np.testing.assert_array_equal(opt[2], lab * 3.0)
        np.testing.assert_array_equal(sar[0], lab * -1.0)
        seen.add(lab.tobytes())
    assert len(seen) > 20  # it really transforms


def _blocky_chip(rng: np.random.Generator, size: int = 48):
    """A label of 8-px blocks (some already ignore) and images that encode it."""
    lab = np.kron(rng.integers(0, 2, (size // 8, size // 8)), np.ones((8, 8))).astype(np.uint8)
    lab[:8, 8:16] = IGNORE
    opt = np.stack([lab * 1.0, lab * 2.0, lab * 3.0]).astype(np.float32) * (lab != IGNORE)
    sar = (lab * -1.0)[None].astype(np.float32) * (lab != IGNORE)
    return opt, sar, lab


def test_free_rotation_keeps_the_label_aligned_and_pads_it_with_ignore():
    import torch

    from pipeline.training.trainer import segmentation_loss

    rng = np.random.default_rng(7)
    opt, sar, lab = _blocky_chip(rng)
    # 90°: the same mapping as np.rot90 for images and label (direction and centre are right)
    o90, s90, l90 = rotate((opt, sar, lab), 90.0)
    np.testing.assert_array_equal(l90, np.rot90(lab))
    np.testing.assert_allclose(o90, np.rot90(opt, axes=(1, 2)), atol=1e-4)
    # 20°: images and label move together; corners come from outside the chip -> ignore / 0
    o20, s20, l20 = rotate((opt, sar, lab), 20.0)
    pad = l20 == IGNORE
    assert pad[0, 0] and pad[0, -1] and pad[-1, 0] and pad[-1, -1]
    corners = ([0, 0, -1, -1], [0, -1, 0, -1])
    assert (o20[:, *corners] == 0).all() and (s20[:, *corners] == 0).all()
    labelled = ~pad
    agree = ((o20[2] > 1.5) == (l20 == 1))[labelled].mean()
    assert agree > 0.95  # only block edges differ (bilinear vs nearest)
    np.testing.assert_allclose(s20[0][labelled], -o20[2][labelled] / 3, atol=1e-5)
    # the padding is ignored by the training loss: changing the logits there changes nothing
    logits = torch.from_numpy(rng.normal(0, 1, (1, 2, *lab.shape)).astype(np.float32))
    moved = logits.clone()
    moved[0, 0][torch.from_numpy(pad)] += 50.0
    target = torch.from_numpy(l20[None].astype(np.int64))
    from pipeline.training.config import TrainConfig

    cfg = TrainConfig.model_validate(
        {"data": {"folders": {"root": "x"}}, "loss": {"dice_weight": 1.0}}
    )
    a = segmentation_loss(logits, target, cfg, None)
    b = segmentation_loss(moved, target, cfg, None)
    assert torch.allclose(a, b)
    # in the chain: on with rotate_p=1, off (no random draw at all) by default
    on = AugmentConfig(flip=False, rot90=False, rotate_degrees=20, rotate_p=1.0)
    _, _, l_on = geometric((opt, sar, lab), on, np.random.default_rng(0))
    assert (l_on == IGNORE).sum() > (lab == IGNORE).sum()
    off = np.random.default_rng(0)
    geometric((opt, sar, lab), AugmentConfig(flip=False, rot90=False), off)
    assert off.random() == np.random.default_rng(0).random()


def test_photometric_jitter_never_touches_sar_and_sar_ops_never_touch_optical():
    rng = np.random.default_rng(5)
    opt, sar, lab = _aligned_chip(rng)
    optical_only = AugmentConfig(
        flip=False,
        rot90=False,
        optical_brightness=0.5,
        optical_contrast=0.5,
        optical_channel_gain=0.2,
        optical_noise=0.2,
        p=1.0,
    )
    o2, s2, l2 = augment((opt, sar, lab), optical_only, rng, sar_units_per_db=2 / 30)
    assert not np.allclose(o2, opt)
    np.testing.assert_array_equal(s2, sar)
    np.testing.assert_array_equal(l2, lab)
    sar_only = AugmentConfig(
        flip=False,
        rot90=False,
        sar_db_offset=3,
        sar_db_gain=0.2,
        sar_speckle_looks=4,
        sar_noise_db=1,
        p=1.0,
    )
    o3, s3, _ = augment((opt, np.repeat(sar, 3, axis=0), lab), sar_only, rng, 2 / 30)
    np.testing.assert_array_equal(o3, opt)
    assert not np.allclose(s3[0], sar[0])
    np.testing.assert_array_equal(s3[0], s3[2])  # replicated SAR bands stay identical
    # a constant dB offset moves SAR by offset·units_per_db exactly
    shift = sar_radiometric(
        sar, AugmentConfig(sar_db_offset=3, p=1.0), np.random.default_rng(0), 2 / 30
    )
    d = np.unique(np.round(shift - sar, 6))
    assert d.size == 1 and abs(d[0]) <= 3 * 2 / 30 + 1e-6
    assert optical_photometric(opt, AugmentConfig(), rng) is not opt


def test_chip_sampler_is_deterministic_and_favours_change_when_asked():
    rng = np.random.default_rng(6)
    lab = np.zeros((64, 64), np.uint8)
    lab[50:54, 50:54] = 1
    area = LabelledArea(
        rng.normal(size=(3, 64, 64)).astype(np.float32),
        rng.normal(size=(1, 64, 64)).astype(np.float32),
        lab,
    )
    a = ChipSampler([area], 16, change_fraction=1.0)
    chips1 = [a.sample(np.random.default_rng(7)) for _ in range(3)]
    chips2 = [a.sample(np.random.default_rng(7)) for _ in range(3)]
    for c1, c2 in zip(chips1, chips2, strict=True):
        np.testing.assert_array_equal(c1[0], c2[0])
    g = np.random.default_rng(8)
    assert all(a.sample(g)[2].any() for _ in range(20))
    small = ChipSampler(
        [LabelledArea(area.optical[:, :8, :8], area.sar[:, :8, :8], lab[:8, :8])], 16
    )
    o, s, l_ = small.sample(g)
    assert o.shape == (3, 16, 16) and (l_[8:, :] == IGNORE).all()
