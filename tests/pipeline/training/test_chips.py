"""Chip-folder datasets: OMBRIA read in place, and any dataset of the same shape by templates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.config import DetectConfig
from pipeline.errors import InputError, NoCRSWarning
from pipeline.io.normalize import sar_to_db
from pipeline.training.config import ChipSource, load_train_config
from pipeline.training.data import (
    IGNORE,
    chip_triples,
    load_areas,
    load_chip_split,
    split_ids,
)

OMBRIA = Path(__file__).resolve().parents[3] / ".." / "shared/data/real/ombria_s2pre_s1post_flood"
needs_ombria = pytest.mark.skipif(not OMBRIA.is_dir(), reason="shared OMBRIA data not present")


@needs_ombria
def test_ombria_layout_as_published_gives_the_upstream_split():
    src = ChipSource(root=str(OMBRIA))
    train, test = chip_triples(src, "train"), chip_triples(src, "test")
    assert (len(train), len(test)) == (624, 70)
    chip_id, opt, sar, lab = train[0]
    assert opt.name == f"S2_before_{chip_id}.png" and sar.name == f"S1_after_{chip_id}.png"
    assert lab.parent.name == "MASK" and "OmbriaS1" in lab.parts


@needs_ombria
def test_ombria_chips_read_through_the_inference_normalisation():
    cfg = load_train_config("ombria").detect
    src = ChipSource(root=str(OMBRIA))
    areas = load_chip_split(src, "test", cfg)[:5]
    for a in areas:
        assert a.optical.shape == (3, 256, 256) and a.sar.shape == (1, 256, 256)
        assert set(np.unique(a.label)) <= {0, 1, IGNORE}
        assert a.optical.min() >= -2.0 and a.optical.max() <= 2.0
        assert a.sar.min() >= -1.0 and a.sar.max() <= 1.0
    flooded = np.concatenate([a.sar[0][a.label == 1] for a in areas])
    dry = np.concatenate([a.sar[0][a.label == 0] for a in areas])
    assert np.median(flooded) < np.median(dry)  # water is dark in SAR


def _png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _fake_dataset(root: Path, ids: list[str]) -> None:
    rng = np.random.default_rng(0)
    for i in ids:
        opt = rng.integers(1, 255, (64, 64, 3), dtype=np.uint8)
        opt[:, :8] = 0  # a black no-data border
        _png(root / "pre" / f"{i}.png", opt)
        _png(root / "post" / f"{i}_sar.png", rng.integers(1, 255, (64, 64), dtype=np.uint8))
        lab = np.zeros((64, 64), np.uint8)
        lab[20:40, 20:40] = 255
        _png(root / "masks" / f"{i}_mask.png", lab)


def test_another_dataset_of_the_same_shape_is_a_config_change(tmp_path):
    ids = [f"{k:03d}" for k in range(10)]
    _fake_dataset(tmp_path / "train", ids)
    cfg = load_train_config(
        {
            "data": {
                "chips": {
                    "root": str(tmp_path),
                    "optical": "{split}/pre/{id}.png",
                    "sar": "{split}/post/{id}_sar.png",
                    "label": "{split}/masks/{id}_mask.png",
                    "val_fraction": 0.2,
                },
                "tile": 32,
            }
        }
    )
    train, val = load_areas(cfg.data, DetectConfig())
    assert len(train) == 8 and len(val) == 2
    assert not {a.name for a in train} & {a.name for a in val}
    a = train[0]
    assert (a.label[:, :8] == IGNORE).all()  # black optical border = nodata = ignore
    assert (a.label[20:40, 20:40] == 1).all() and (a.label[:20, 8:] == 0).all()


def test_a_chip_without_its_partner_file_is_named(tmp_path):
    _fake_dataset(tmp_path / "train", ["a", "b"])
    (tmp_path / "train" / "post" / "b_sar.png").unlink()
    src = ChipSource(
        root=str(tmp_path),
        optical="{split}/pre/{id}.png",
        sar="{split}/post/{id}_sar.png",
        label="{split}/masks/{id}_mask.png",
    )
    with pytest.raises(InputError, match=r"b_sar\.png.*no partner"):
        chip_triples(src, "train")


def test_validation_ids_are_seeded_and_independent_of_file_order():
    ids = [f"{i:04d}" for i in range(100)]
    tr, va = split_ids(ids, 0.15, seed=3)
    assert len(va) == 15 and sorted(tr + va) == ids
    assert split_ids(list(reversed(ids)), 0.15, seed=3) == (tr, va)
    assert split_ids(ids, 0.15, seed=4)[1] != va
    assert split_ids(ids, 0.0, 0) == (ids, [])


def test_db_stored_as_8_bit_dn_is_unstretched():
    sar = load_train_config("ombria").detect.sar
    db = sar_to_db(np.array([0, 255], np.uint8), "db", sar)
    assert np.allclose(db, [-25.0, 0.0], atol=1e-3)


def test_plain_image_chips_say_no_crs_once_for_the_dataset(tmp_path):
    """OMBRIA's 1,388 PNGs once printed one no-CRS warning each; a dataset says it once."""
    _fake_dataset(tmp_path / "train", [f"{k:02d}" for k in range(6)])
    src = ChipSource(
        root=str(tmp_path),
        optical="{split}/pre/{id}.png",
        sar="{split}/post/{id}_sar.png",
        label="{split}/masks/{id}_mask.png",
    )
    with pytest.warns(NoCRSWarning) as record:
        areas = load_chip_split(src, "train", DetectConfig())
    assert len(areas) == 6
    said = [str(w.message) for w in record if issubclass(w.category, NoCRSWarning)]
    assert len(said) == 1 and str(tmp_path) in said[0] and "of 6 chips" in said[0]
