"""Real-data evaluation (issue 6 item 5): fine-tune on a strip of each real pair, score the rest.

One command per step, each reproducible (fixed splits, seeds, recipe file):

    python -m eval.real_eval prepare   --data ../shared/data/real --cache runs/real/cache
    python -m eval.real_eval baselines --cache runs/real/cache --out runs/real/baselines.jsonl
    python -m eval.real_eval finetune  --cache runs/real/cache --out runs/real/finetune.jsonl \
        --recipe configs/train/finetune.yaml --variants siam_r18,m2cd_r18,m2cd_r18_o2sp --seeds 0,1,2
    python -m eval.real_eval table     runs/real/baselines.jsonl runs/real/finetune.jsonl

``prepare`` reads every scene with the pipeline's reader, normalisation and valid mask
(``pipeline.training.data.read_pair``) and stores the normalised arrays, so that the later steps
need only numpy + torch (they also run on a GPU machine without GDAL). The split of each scene is a
training strip (pixel windows, below) containing change; the test set is every other labelled pixel.

Modality order: the *_sar2opt sets have SAR at t1 and optical at t2; we feed the optical image as
input A and the SAR as input B (the model's convention), so pre/post are swapped w.r.t. CAU-Flood.
Gloucester's t2 is a single band whose SAR-vs-optical nature is disputed; it is fed as B.
Italy (optical→optical, no SAR) is excluded: it does not test optical→SAR change detection.

Over 400 lines because the scene table (folders, files, training windows: ~80 lines of data) is the
evaluation's definition and belongs beside the steps that read it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import typer

from pipeline.config import parse_overrides
from pipeline.training.data import IGNORE, LabelledArea

# scene -> folder, optical file (A), SAR file (B), training windows (r0, r1, c0, c1)
SCENES: dict[str, dict[str, Any]] = {
    # factory + ponds (top) and a river strip (right): the training area holds part of each kind
    "shuguang": {
        "folder": "shuguang_sar2opt",
        "optical": "t2.png",
        "sar": "t1.png",
        "train": [(0, 300, 0, 260), (400, 593, 700, 921)],
    },
    # river-bank changes along both arcs; the top rows hold the upper arc
    "yellow_river": {
        "folder": "yellow_river_sar2opt",
        "optical": "t2.png",
        "sar": "t1.png",
        "train": [(0, 150, 0, 291)],
    },
    # new building blocks and roads everywhere; the left strip holds a block and a road
    "lpem4": {
        "folder": "lpem4_sar2opt_urban",
        "optical": "t2.png",
        "sar": "t1.png",
        "train": [(0, 495, 0, 170)],
    },
    # flood along the river; the top strip holds the upper reaches
    "gloucester2": {
        "folder": "gloucester2_img17_flood",
        "optical": "t1.png",
        "sar": "t2.png",
        "train": [(0, 250, 0, 554)],
    },
}

# ablation variants: name -> (model config, overrides)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "siam_r18": ("siam_r18", {}),
    "m2cd_r18": ("m2cd_r18", {}),
    "m2cd_r18_o2sp": ("m2cd_r18", {"o2sp.enabled": True}),
    "siam_mit_b0": ("siam_mit_b0", {}),
    "m2cd_mit_b0": ("m2cd_mit_b0", {}),
    "m2cd_mit_b0_o2sp": ("m2cd_mit_b0", {"o2sp.enabled": True}),
}
# the user's one-command path (`m2cd train --optical A --sar B --label L --train-window W`): the
# recipe's own model and start (finetune.yaml: the shipped model), the last 20 % of each window
# held out, and the threshold the trainer fits there and stores in the checkpoint
DEFAULTS = "defaults"


def train_mask(shape: tuple[int, int], windows: list[tuple[int, int, int, int]]) -> np.ndarray:
    mask = np.zeros(shape, bool)
    for r0, r1, c0, c1 in windows:
        mask[r0:r1, c0:c1] = True
    return mask


# ---------------------------------------------------------------------------------------------
# prepare


def prepare(data: Path, cache: Path, sets: dict[str, Any] | None = None) -> None:
    from pipeline.config import load_detect_config
    from pipeline.training.data import read_label, read_pair
    from pipeline.training.labels import file_values, label_encoding

    cache.mkdir(parents=True, exist_ok=True)
    cfg = load_detect_config("default", sets or {})
    for name, s in SCENES.items():
        folder = data / s["folder"]
        opt, sar, valid, grid = read_pair(
            str(folder / s["optical"]), str(folder / s["sar"]), cfg, None
        )
        gt = str(folder / "gt.png")
        label = read_label(gt, grid, None, label_encoding(file_values(gt)[0], gt))
        label[~valid] = IGNORE
        np.savez_compressed(
            cache / f"{name}.npz",
            optical=opt,
            sar=sar,
            label=label,
            train=train_mask(label.shape, s["train"]),
        )
        meta = {
            "scene": name,
            **s,
            "source": str(folder),
            "shape": list(label.shape),
            "change_fraction": float((label == 1).mean()),
            "invalid": int((~valid).sum()),
        }
        (cache / f"{name}.json").write_text(json.dumps(meta, indent=2))
        print(json.dumps(meta))


def load_cached(cache: Path, name: str) -> dict[str, np.ndarray]:
    with np.load(cache / f"{name}.npz") as z:
        return {k: z[k] for k in z.files}


def split_stats(arr: dict[str, np.ndarray]) -> dict[str, Any]:
    lab, tr = arr["label"], arr["train"]
    return {
        "train_px": int((tr & (lab != IGNORE)).sum()),
        "train_change": float((lab[tr] == 1).mean()),
        "test_px": int((~tr & (lab != IGNORE)).sum()),
        "test_change": float((lab[~tr] == 1).mean()),
    }


def test_metrics(pred: np.ndarray, arr: dict[str, np.ndarray]) -> dict[str, Any]:
    """Score a full-scene 0/1 prediction on the test pixels (everything outside the strip)."""
    from pipeline.training.evaluate import evaluate_arrays

    label = np.where(arr["train"], IGNORE, arr["label"]).astype(np.uint8)
    m = evaluate_arrays(pred.astype(np.uint8), label)
    return {k: m[k] for k in ("precision", "recall", "f1", "iou", "oa", "kappa", "pixels")}


# ---------------------------------------------------------------------------------------------
# baselines


def run_baselines(cache: Path, out: Path) -> None:
    from pipeline.training import baselines

    with open(out, "a") as f:
        for name in SCENES:
            arr = load_cached(cache, name)
            valid = arr["label"] != IGNORE
            for b in ("sar_threshold", "log_difference"):
                model = baselines.fit(b, arr["optical"], arr["sar"], arr["label"], arr["train"])
                pred = baselines.predict(model, arr["optical"], arr["sar"], valid)
                rec = {
                    "kind": "baseline",
                    "scene": name,
                    "variant": b,
                    "seed": 0,
                    "fit": model.to_dict(),
                    **split_stats(arr),
                    **test_metrics(pred, arr),
                }
                f.write(json.dumps(rec) + "\n")
                print(json.dumps(rec))


# ---------------------------------------------------------------------------------------------
# fine-tuning


def held_out_windows(
    arr: dict[str, np.ndarray], windows: list[tuple[int, int, int, int]]
) -> tuple[list[tuple[int, int, int, int]], list[tuple[int, int, int, int]]]:
    """The CLI's split of training windows when no --val-window is given (the same rule,
    pipeline.training.holdout, on the cached label)."""
    from pipeline.training.holdout import HELD_OUT, hold_out

    label = arr["label"]

    def share(window: tuple[int, int, int, int]) -> float | None:
        r0, r1, c0, c1 = window
        part = label[r0:r1, c0:c1]
        labelled = int((part != IGNORE).sum())
        return float((part == 1).sum()) / labelled if labelled else None

    return hold_out(windows, HELD_OUT, share)


def stored_threshold(checkpoint: Path) -> float:
    """The decision threshold the trainer fitted on the held-out windows (0.5 when none)."""
    meta = json.loads((Path(checkpoint) / "checkpoint.json").read_text())
    return float(meta.get("provenance", {}).get("threshold", 0.5))


def areas_of(arr: dict[str, np.ndarray], windows: list[tuple[int, int, int, int]], name: str):
    return [
        LabelledArea(
            np.ascontiguousarray(arr["optical"][:, r0:r1, c0:c1]),
            np.ascontiguousarray(arr["sar"][:, r0:r1, c0:c1]),
            np.ascontiguousarray(arr["label"][r0:r1, c0:c1]),
            f"{name}[{r0}:{r1},{c0}:{c1}]",
        )
        for r0, r1, c0, c1 in windows
    ]


def predict_scene(
    model: Any, arr: dict[str, np.ndarray], device: Any, amp: Any, tta: bool = False
) -> np.ndarray:
    """Whole-scene 0/1 mask: change probability ≥ 0.5."""
    return (predict_probability(model, arr, device, amp, tta) >= 0.5).astype(np.uint8)


def fit_threshold(prob: np.ndarray, arr: dict[str, np.ndarray]) -> float:
    """The threshold with the best change F1 on the *training strip* (never the test part)."""
    from pipeline.training.evaluate import fit_threshold as fit

    return fit(prob, np.where(arr["train"], arr["label"], IGNORE).astype(np.uint8))[0]


def predict_probability(
    model: Any, arr: dict[str, np.ndarray], device: Any, amp: Any, tta: bool = False
) -> np.ndarray:
    """Whole-scene forward (the scenes are < 0.6 Mpx) -> change probability H×W float32.

    `tta`: average the change probability over the 8 flips/rotations of the pair (each mapped
    back before averaging): the same model, no fitting, so no selection on the test part.
    """
    import torch

    from pipeline.engine.predict import DIHEDRAL, change_probability
    from pipeline.io.normalize import match_channels

    opt = torch.from_numpy(match_channels(arr["optical"], model.config.bands.optical_channels))
    sar = torch.from_numpy(match_channels(arr["sar"], model.config.bands.sar_channels))
    views = DIHEDRAL if tta else DIHEDRAL[:1]
    prob = change_probability(
        model, opt[None].contiguous().to(device), sar[None].contiguous().to(device), views, amp
    )
    return prob[0].cpu().numpy().astype(np.float32)


def run_finetune(
    cache: Path,
    out: Path,
    recipe: str,
    scenes: list[str],
    variants: list[str],
    seeds: list[int],
    steps: int | None,
    workdir: Path,
    data_root: str,
    sets: dict[str, Any] | None = None,
    tag: str = "",
    with_tta: bool = False,
) -> None:
    import m2cd
    from pipeline.engine.device import autocast_dtype, resolve_device
    from pipeline.training.config import load_train_config
    from pipeline.training.trainer import train

    for name in scenes:
        arr = load_cached(cache, name)
        s = SCENES[name]
        for variant in variants:
            user_path = variant == DEFAULTS
            train_windows, val_windows = (
                held_out_windows(arr, s["train"]) if user_path else (s["train"], [])
            )
            train_areas = areas_of(arr, train_windows, name)
            val_areas = areas_of(arr, val_windows, name)
            for seed in seeds:
                folder = f"{data_root}/{s['folder']}"
                over: dict[str, Any] = {
                    "seed": seed,
                    "progress": False,
                    "data.scenes": [
                        {
                            "optical": f"{folder}/{s['optical']}",
                            "sar": f"{folder}/{s['sar']}",
                            "label": f"{folder}/gt.png",
                            "train": [{"window": list(w)} for w in train_windows],
                            "val": [{"window": list(w)} for w in val_windows],
                        }
                    ],
                }
                cfg = load_train_config(recipe, {**over, **(sets or {})})
                update: dict[str, Any] = {"steps": steps} if steps else {}
                if not user_path:
                    model_name, overrides = VARIANTS[variant]
                    update |= {"model": model_name, "model_overrides": overrides}
                stage = cfg.stages[-1].model_copy(update=update)
                cfg = cfg.model_copy(update={"stages": [stage]})
                run_dir = workdir / name / f"{variant}{tag}" / f"seed{seed}"
                t0 = time.time()
                result = train(cfg, run_dir, areas=(train_areas, val_areas), resume=True)
                seconds = time.time() - t0
                device = resolve_device(cfg.device)
                model = m2cd.load_checkpoint(result.best, map_location=device)
                amp = autocast_dtype(device, cfg.precision)
                for tta in (False, True) if with_tta else (False,):
                    prob = predict_probability(model, arr, device, amp, tta=tta)
                    if user_path:  # what `m2cd detect` would use: the checkpoint's threshold
                        cuts = [("", stored_threshold(result.best))]
                    else:
                        cuts = [("", 0.5), ("_cal", fit_threshold(prob, arr))]
                    for suffix, threshold in cuts:
                        pred = (prob >= threshold).astype(np.uint8)
                        rec = {
                            "kind": "finetune",
                            "scene": name,
                            "variant": variant + tag + ("_tta" if tta else "") + suffix,
                            "seed": seed,
                            "overrides": sets or {},
                            "steps": stage.steps,
                            "recipe": recipe,
                            "threshold": threshold,
                            "train_seconds": round(seconds, 1),
                            "device": str(device),
                            **split_stats(arr),
                            **test_metrics(pred, arr),
                        }
                        with open(out, "a") as f:
                            f.write(json.dumps(rec) + "\n")
                        print(json.dumps(rec), flush=True)


# ---------------------------------------------------------------------------------------------
# table


def table(paths: list[Path]) -> str:
    """Markdown: per scene and variant, change-class F1 and IoU as mean ± std over seeds."""
    rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for p in paths:
        for line in Path(p).read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                rows.setdefault((r["scene"], r["variant"]), []).append(r)
    out = [
        "| scene | method | seeds | change F1 | change IoU | precision | recall |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]

    def fmt(vals: list[float]) -> str:
        return f"{np.mean(vals):.3f}" + (f" ± {np.std(vals):.3f}" if len(vals) > 1 else "")

    for scene in SCENES:
        for (sc, variant), rs in sorted(rows.items()):
            if sc != scene:
                continue
            out.append(
                f"| {scene} | {variant} | {len(rs)} | {fmt([r['f1'] for r in rs])} | "
                f"{fmt([r['iou'] for r in rs])} | {fmt([r['precision'] for r in rs])} | "
                f"{fmt([r['recall'] for r in rs])} |"
            )
    return "\n".join(out)


app = typer.Typer(
    help=__doc__.split("\n\n")[0],
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command("prepare")
def prepare_command(
    data: Path = typer.Option(Path("../shared/data/real")),
    cache: Path = typer.Option(Path("runs/real/cache")),
    set_: list[str] = typer.Option(
        [], "--set", metavar="KEY=YAML", help="detect-config override, e.g. sar.units=db"
    ),
) -> None:
    """Normalise every scene once (the later steps need only numpy + torch)."""
    prepare(data, cache, parse_overrides(set_))


@app.command("zeroshot")
def zeroshot_command(
    cache: Path = typer.Option(Path("runs/real/cache-db")),
    out: Path = typer.Option(Path("runs/real/zeroshot.jsonl")),
    checkpoint: Path | None = typer.Option(None, help="default: the shipped model"),
) -> None:
    """Score a model with no fine-tuning on every scene's test part, at its own threshold."""
    import m2cd
    from m2cd.pretrained import shipped_checkpoint
    from pipeline.engine.request import checkpoint_threshold

    ckpt = checkpoint or shipped_checkpoint()
    model = m2cd.load_checkpoint(ckpt)
    threshold = checkpoint_threshold(str(ckpt))
    out.parent.mkdir(parents=True, exist_ok=True)
    import torch

    for name in SCENES:
        arr = load_cached(cache, name)
        prob = predict_probability(model, arr, torch.device("cpu"), None)
        for suffix, t in (("", threshold), ("_at_0.5", 0.5)):
            rec = {
                "kind": "zeroshot",
                "scene": name,
                "variant": f"{ckpt.name}{suffix}",
                "threshold": t,
                **split_stats(arr),
                **test_metrics((prob >= t).astype(np.uint8), arr),
            }
            with open(out, "a") as f:
                f.write(json.dumps(rec) + "\n")
            print(json.dumps(rec), flush=True)


@app.command("baselines")
def baselines_command(
    cache: Path = typer.Option(Path("runs/real/cache")),
    out: Path = typer.Option(Path("runs/real/baselines.jsonl")),
) -> None:
    """Score the untrained baselines on every scene's test part."""
    out.parent.mkdir(parents=True, exist_ok=True)
    run_baselines(cache, out)


@app.command("finetune")
def finetune_command(
    cache: Path = typer.Option(Path("runs/real/cache")),
    out: Path = typer.Option(Path("runs/real/finetune.jsonl")),
    workdir: Path = typer.Option(Path("runs/real/train")),
    recipe: str = typer.Option("configs/train/finetune.yaml"),
    scenes: str = typer.Option(",".join(SCENES)),
    variants: str = typer.Option(
        "siam_r18,m2cd_r18,m2cd_r18_o2sp",
        help=f"ablation variants, or {DEFAULTS!r}: the one-command fine-tune as a user runs it",
    ),
    seeds: str = typer.Option("0,1,2"),
    steps: int | None = typer.Option(None, help="override the recipe's step budget"),
    set_: list[str] = typer.Option(
        [],
        "--set",
        metavar="KEY=YAML",
        help="recipe override, e.g. data.min_change_fraction=0 (repeatable)",
    ),
    tag: str = typer.Option("", help="suffix of the variant name in the results"),
    tta: bool = typer.Option(
        False, help="also score the same weights with 8-view flip/rotation averaging (+ _tta)"
    ),
    data_root: str = typer.Option("../shared/data/real", help="recorded in the config only"),
) -> None:
    """Fine-tune each variant on each scene's training strip and score the rest."""
    out.parent.mkdir(parents=True, exist_ok=True)
    run_finetune(
        cache,
        out,
        recipe,
        scenes.split(","),
        variants.split(","),
        [int(v) for v in seeds.split(",")],
        steps,
        workdir,
        data_root,
        parse_overrides(set_),
        tag,
        tta,
    )


@app.command("table")
def table_command(results: list[Path] = typer.Argument(..., help="JSONL result files.")) -> None:
    """The EVALUATION.md table of the given result files."""
    print(table(results))


def main(argv: list[str] | None = None) -> int:
    """Run one step; the exit code of the command."""
    try:
        app(args=argv, standalone_mode=False)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
