"""OMBRIA evaluation: the shipped model and the simple baselines on the upstream test split.

OMBRIA (Drakonakis et al., IEEE JSTARS 2022; ../shared/data/real/ombria_s2pre_s1post_flood) is read
in place with the training reader (``pipeline.training.data``), so the pixels are normalised exactly
as the model was trained on them and as ``m2cd detect`` reads them. Scores are change-class
(flooded) F1 and IoU over all valid test pixels pooled (micro), the convention of the published
figures (MRCCDNet reports F1 83.14 on OMBRIA).

Baselines, fitted on the *train* split only (never on test):
- ``sar_darkness``: post-event SAR dB after a mean filter, thresholded (water is dark);
- ``sar_log_ratio``: post minus pre SAR dB (the classic two-date Sentinel-1 change detector),
  mean filtered, thresholded;
both with the sign, filter size (1/3/5/7) and threshold that maximise train F1.

    python -m eval.ombria baselines
    python -m eval.ombria model --checkpoint m2cd/weights/<name> [--tta] [--threshold T]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from scipy.ndimage import uniform_filter

from m2cd.metrics import ConfusionMatrix
from pipeline.config import DetectConfig
from pipeline.training.baselines import best_threshold
from pipeline.training.config import ChipSource, load_train_config
from pipeline.training.data import IGNORE, LabelledArea, chip_triples, load_chip_triples

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.split("\n\n")[0])
ROOT = "../shared/data/real/ombria_s2pre_s1post_flood"
SAR_BEFORE = "OmbriaS1/{split}/BEFORE/S1_before_{id}.png"


def recipe_detect_config() -> DetectConfig:
    """The normalisation the shipped recipe trains with (configs/train/ombria.yaml)."""
    return load_train_config("ombria").detect


def load_split(root: str, split: str, cfg: DetectConfig, channels=None) -> list[LabelledArea]:
    """Every chip of ``split`` (optical before, SAR after, mask) as the trainer reads it."""
    src = ChipSource(root=root)
    return load_chip_triples(chip_triples(src, split), cfg, channels=channels, source=root)


def load_sar_before(root: str, split: str, cfg: DetectConfig) -> list[np.ndarray]:
    """Pre-event SAR chips (normalised dB) for the two-date log-ratio baseline."""
    src = ChipSource(root=root, sar=SAR_BEFORE)
    return [a.sar for a in load_chip_triples(chip_triples(src, split), cfg, source=root)]


def scores(preds: list[np.ndarray], areas: list[LabelledArea]) -> dict[str, float]:
    """Pooled change-class metrics of 0/1 predictions against the areas' labels."""
    cm = ConfusionMatrix(2, ignore=IGNORE)
    for pred, a in zip(preds, areas, strict=True):
        cm.update(np.asarray(pred, np.int64), a.label)
    d = cm.to_dict()
    return {k: round(float(d[k]), 4) for k in ("f1", "iou", "precision", "recall", "oa", "kappa")}


def _pooled(maps: list[np.ndarray], areas: list[LabelledArea]) -> tuple[np.ndarray, np.ndarray]:
    keep = [a.label != IGNORE for a in areas]
    s = np.concatenate([m[k] for m, k in zip(maps, keep, strict=True)])
    y = np.concatenate([a.label[k] == 1 for a, k in zip(areas, keep, strict=True)])
    return s, y


def fit_baseline(train_maps: list[np.ndarray], train: list[LabelledArea]) -> dict[str, Any]:
    """Sign, filter size and threshold with the best train F1 (exact threshold search)."""
    best: dict[str, Any] | None = None
    for size in (1, 3, 5, 7):
        filt = [uniform_filter(m, size, mode="nearest") if size > 1 else m for m in train_maps]
        s, y = _pooled(filt, train)
        for sign in (1, -1):
            t, f1 = best_threshold(sign * s, y)
            if best is None or f1 > best["train_f1"]:
                best = {"size": size, "sign": sign, "threshold": sign * t, "train_f1": f1}
    assert best is not None
    return best


def apply_baseline(fit: dict[str, Any], maps: list[np.ndarray]) -> list[np.ndarray]:
    out = []
    for m in maps:
        f = uniform_filter(m, fit["size"], mode="nearest") if fit["size"] > 1 else m
        out.append((f > fit["threshold"] if fit["sign"] > 0 else f < fit["threshold"]).astype(int))
    return out


@app.command()
def baselines(
    root: Annotated[str, typer.Option(help="OMBRIA folder as published.")] = ROOT,
    out: Annotated[Path | None, typer.Option(help="Write the JSON here too.")] = None,
) -> None:
    """SAR darkness and two-date SAR log-ratio, fitted on train, scored on test."""
    cfg = recipe_detect_config()
    result: dict[str, Any] = {}
    train, test = load_split(root, "train", cfg), load_split(root, "test", cfg)
    pre_train, pre_test = load_sar_before(root, "train", cfg), load_sar_before(root, "test", cfg)
    maps = {
        "sar_darkness": (
            [a.sar.mean(0).astype(np.float64) for a in train],
            [a.sar.mean(0).astype(np.float64) for a in test],
        ),
        "sar_log_ratio": (  # normalised dB difference = dB difference × 2 / (hi - lo)
            [
                (a.sar.mean(0) - b.mean(0)).astype(np.float64)
                for a, b in zip(train, pre_train, strict=True)
            ],
            [
                (a.sar.mean(0) - b.mean(0)).astype(np.float64)
                for a, b in zip(test, pre_test, strict=True)
            ],
        ),
    }
    for name, (tr_maps, te_maps) in maps.items():
        fit = fit_baseline(tr_maps, train)
        result[name] = {"fit": fit, "test": scores(apply_baseline(fit, te_maps), test)}
    text = json.dumps(result, indent=2)
    typer.echo(text)
    if out:
        out.write_text(text + "\n")


def predict_areas(
    checkpoint: Path, areas: list[LabelledArea], tta: bool, batch: int = 8
) -> list[np.ndarray]:
    """Change probability of every chip through the engine's forward (``Predictor``)."""
    import m2cd
    from pipeline.engine.predict import Predictor
    from pipeline.io.normalize import match_channels

    model = m2cd.load_checkpoint(checkpoint)
    bands = model.config.bands
    predictor = Predictor(model, batch, tta=tta)
    probs: list[np.ndarray] = []
    for i in range(0, len(areas), batch):
        chunk = areas[i : i + batch]
        opt = np.stack([match_channels(a.optical, bands.optical_channels) for a in chunk])
        sar = np.stack([match_channels(a.sar, bands.sar_channels) for a in chunk])
        probs.extend(predictor(opt, sar)[: len(chunk)])
    return probs


@app.command()
def model(
    checkpoint: Annotated[Path, typer.Option(help="m2cd checkpoint directory.")],
    root: Annotated[str, typer.Option(help="OMBRIA folder as published.")] = ROOT,
    split: Annotated[str, typer.Option(help="test (report) or train.")] = "test",
    tta: Annotated[bool, typer.Option(help="Average the 8 flips/rotations.")] = False,
    threshold: Annotated[
        float | None, typer.Option(help="Decision threshold; default: the checkpoint's, else 0.5.")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Write the JSON here too.")] = None,
) -> None:
    """Score a checkpoint on one OMBRIA split."""
    import m2cd

    cfg = recipe_detect_config()
    loaded = m2cd.load_checkpoint(checkpoint)
    bands = loaded.config.bands
    areas = load_split(root, split, cfg, (bands.optical_channels, bands.sar_channels))
    if threshold is None:
        provenance = json.loads((checkpoint / "checkpoint.json").read_text()).get("provenance", {})
        threshold = float(provenance.get("threshold") or 0.5)
    preds = [(p >= threshold).astype(np.uint8) for p in predict_areas(checkpoint, areas, tta)]
    result = {
        "checkpoint": str(checkpoint),
        "digest": m2cd.checkpoint_digest(checkpoint),
        "split": split,
        "chips": len(areas),
        "tta": tta,
        "threshold": threshold,
        "metrics": scores(preds, areas),
    }
    text = json.dumps(result, indent=2)
    typer.echo(text)
    if out:
        out.write_text(text + "\n")


def routing_figure(shares: list[dict[str, Any]], path: Path) -> None:
    """Bars per stage and expert: optical (blue) and SAR (orange) share of tokens (PIL only)."""
    from PIL import Image, ImageDraw

    experts = len(shares[0]["optical_share"])
    cell_w, bar_w, h, top = 26, 10, 160, 30
    width = 60 + len(shares) * (experts * cell_w + 30)
    img = Image.new("RGB", (width, h + top + 50), "white")
    draw = ImageDraw.Draw(img)
    draw.text((10, 6), "share of optical (blue) and SAR (orange) tokens per expert", fill="black")
    x = 50
    for row in shares:
        for e in range(experts):
            for k, (key, colour) in enumerate(
                (("optical_share", (31, 119, 180)), ("sar_share", (255, 127, 14)))
            ):
                v = float(row[key][e])
                x0 = x + e * cell_w + k * bar_w
                draw.rectangle([x0, top + h - v * h, x0 + bar_w - 1, top + h], fill=colour)
            draw.text((x + e * cell_w + 4, top + h + 4), f"e{e}", fill="black")
        draw.text(
            (x, top + h + 20),
            f"stage {row['stage']} TV {row['modality_tv_distance']}",
            fill="black",
        )
        x += experts * cell_w + 30
    draw.line([45, top, 45, top + h], fill="black")
    draw.text((5, top - 4), "1.0", fill="black")
    draw.text((5, top + h - 8), "0", fill="black")
    img.save(path)


@app.command()
def routing(
    checkpoint: Annotated[Path, typer.Option(help="m2cd checkpoint directory.")],
    root: Annotated[str, typer.Option(help="OMBRIA folder as published.")] = ROOT,
    split: Annotated[str, typer.Option(help="Which split's chips to route.")] = "test",
    out: Annotated[Path, typer.Option(help="JSON out; the PNG figure goes beside it.")] = Path(
        "routing.json"
    ),
) -> None:
    """Share of optical and SAR tokens each expert takes at each MoE stage (do experts specialise
    by modality, as the paper argues?)."""
    import torch

    import m2cd
    from m2cd.routing import record_routing, routing_shares
    from pipeline.io.normalize import match_channels

    model = m2cd.load_checkpoint(checkpoint).eval()
    bands = model.config.bands
    areas = load_split(root, split, recipe_detect_config(), (bands.optical_channels, 1))
    with torch.no_grad(), record_routing(model) as records:
        for i in range(0, len(areas), 8):
            chunk = areas[i : i + 8]
            opt = np.stack([match_channels(a.optical, bands.optical_channels) for a in chunk])
            sar = np.stack([match_channels(a.sar, bands.sar_channels) for a in chunk])
            model(torch.from_numpy(opt), torch.from_numpy(sar))
    shares = routing_shares(records)
    out.write_text(
        json.dumps({"checkpoint": str(checkpoint), "split": split, "stages": shares}, indent=2)
        + "\n"
    )
    routing_figure(shares, out.with_suffix(".png"))
    typer.echo(json.dumps(shares, indent=2))


if __name__ == "__main__":
    app()
