"""`m2cd evaluate` against hand-computed metrics; `m2cd train` shorthand on a synthetic scene."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from flows.cli import main
from pipeline.training.baselines import best_threshold, fit, predict
from pipeline.training.evaluate import evaluate_arrays


def _tif(path, arr, nodata=None) -> str:
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        height=arr.shape[0],
        width=arr.shape[1],
        count=1,
        dtype=arr.dtype,
        crs="EPSG:32633",
        transform=from_origin(0, 0, 10, 10),
        nodata=nodata,
    ) as dst:
        dst.write(arr[None])
    return str(path)


# 4×5 example. label: 0/255 (255 = change); prediction: 0/1 with 255 = nodata (not counted)
LABEL = np.array(
    [[255, 255, 255, 0, 0], [255, 255, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 255]], np.uint8
)
PRED = np.array([[1, 1, 1, 1, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 255]], np.uint8)
# counted: 19 px. TP = 3, FN = 2, FP = 1, TN = 13
TP, FN, FP, TN = 3, 2, 1, 13


def _expected() -> dict[str, float]:
    n = TP + FN + FP + TN
    p, r = TP / (TP + FP), TP / (TP + FN)
    oa = (TP + TN) / n
    pe = ((TP + FP) * (TP + FN) + (FN + TN) * (FP + TN)) / n**2
    return {
        "precision": p,
        "recall": r,
        "f1": 2 * p * r / (p + r),
        "iou": TP / (TP + FP + FN),
        "oa": oa,
        "kappa": (oa - pe) / (1 - pe),
        "pixels": n,
    }


def test_evaluate_cli_matches_hand_computed_metrics(tmp_path, capsys):
    label = _tif(tmp_path / "label.tif", LABEL)
    pred = _tif(tmp_path / "pred.tif", PRED, nodata=255)
    assert main(["evaluate", "--pred", pred, "--label", label]) == 0
    got = json.loads(capsys.readouterr().out)
    for key, value in _expected().items():
        assert got[key] == pytest.approx(value), key
    assert got["f1"] == pytest.approx(2 / 3) and got["iou"] == pytest.approx(0.5)
    # a window: the top two rows only -> TP 3, FN 2, FP 1, TN 4
    assert main(["evaluate", "--pred", pred, "--label", label, "--window", "0:2,0:5"]) == 0
    win = json.loads(capsys.readouterr().out)
    assert win["pixels"] == 10 and win["precision"] == pytest.approx(0.75)


def test_evaluate_cli_fits_the_threshold_on_a_probability_raster(tmp_path, capsys):
    prob = np.array(
        [[0.9, 0.8, 0.7, 0.5, 0.1], [0.35, 0.3, 0.2, 0.1, 0.0], [0.1] * 5, [0.2] * 4 + [np.nan]],
        np.float32,
    )
    label = _tif(tmp_path / "label.tif", LABEL)
    path = _tif(tmp_path / "change_prob.tif", prob, nodata=float("nan"))
    assert main(["evaluate", "--prob", path, "--label", label]) == 0
    got = json.loads(capsys.readouterr().out)
    # counted change: (0,0..2), (1,0), (1,1) (the NaN pixel is not counted); 0.3 keeps all five
    # at the cost of one false alarm, the 0.5 at (0,3): F1 10/11; 0.35 loses (1,1): F1 0.8
    assert got["f1"] == pytest.approx(10 / 11) and got["f1_by_threshold"]["0.35"] == pytest.approx(
        0.8
    )
    assert got["threshold"] == 0.3 and got["pixels"] == 19
    rc = main(["evaluate", "--pred", path, "--prob", path, "--label", label])
    assert rc == 2 and "exactly one of --pred" in capsys.readouterr().err


def test_evaluate_cli_reports_bad_labels_without_traceback(tmp_path, capsys):
    bad = LABEL.copy()
    bad[2, 2] = 128
    rc = main(
        [
            "evaluate",
            "--pred",
            _tif(tmp_path / "p.tif", PRED),
            "--label",
            _tif(tmp_path / "l.tif", bad),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "l.tif" in err and "neither 0/1" in err and "Traceback" not in err


def test_evaluate_arrays_ignores_label_255_for_01_labels():
    m = evaluate_arrays(np.array([1, 0, 1, 1]), np.array([1, 0, 255, 0]))
    assert m["pixels"] == 3 and m["precision"] == pytest.approx(0.5) and m["recall"] == 1.0


def test_threshold_baseline_fits_on_the_training_strip():
    scores = np.array([0.1, 0.2, 0.8, 0.9, 0.3])
    t, f1 = best_threshold(scores, np.array([0, 0, 1, 1, 0]))
    assert 0.3 < t < 0.8 and f1 == 1.0
    rng = np.random.default_rng(0)
    lab = np.zeros((40, 40), np.uint8)
    lab[:, 25:32] = 1  # a dark "flood" band crossing the train and test halves
    sar = (rng.normal(0, 0.2, (1, 40, 40)) - 0.6 * lab).astype(np.float32)
    opt = rng.normal(0, 0.2, (3, 40, 40)).astype(np.float32)
    train = np.zeros_like(lab, bool)
    train[:20] = True
    model = fit("sar_threshold", opt, sar, lab, train)
    assert model.sign == -1  # darker = change
    pred = predict(model, opt, sar, lab != 255)
    assert evaluate_arrays(np.where(train, 255, pred), lab)["f1"] > 0.9


def test_train_cli_one_scene_shorthand(tmp_path, capsys):
    from pipeline.synth import SynthSpec, synth_pair

    scene = synth_pair(
        tmp_path / "scene", SynthSpec(size=(64, 64), seed=3, sar_bands=1, change_fraction=0.1)
    )
    out = tmp_path / "run"
    args = [
        "train",
        "--optical",
        str(scene.optical),
        "--sar",
        str(scene.sar),
        "--label",
        str(scene.label),
        "--train-window",
        "0:48,0:64",
        "--val-window",
        "48:64,0:64",
        "--model",
        "tiny",
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--tile",
        "32",
        "--out",
        str(out),
        "--no-progress",
        "--set",
        "val_every=2",
        "--set",
        "precision=fp32",
    ]
    assert main(args) == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 2 and summary["best_val"] is not None
    cfg = json.loads((out / "train_config.json").read_text())
    assert cfg["data"]["scenes"][0]["val"][0]["window"] == [48, 64, 0, 64]
    import m2cd

    assert m2cd.load_checkpoint(out / "best").config.name == "tiny"
    # a second run into the same directory needs --resume
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    # --init starts from those weights (e.g. a pretraining's best): recorded in the recipe
    out2 = tmp_path / "from_best"
    init_args = [*args[: args.index("--out")], "--out", str(out2), *args[args.index("--out") + 2 :]]
    assert main([*init_args, "--init", str(out / "best")]) == 0, capsys.readouterr().err
    cfg2 = json.loads((out2 / "train_config.json").read_text())
    assert cfg2["stages"][-1]["init"] == str(out / "best")
