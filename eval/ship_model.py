"""Turn a finished OMBRIA training run into the shipped default model (m2cd/weights/<name>/).

1. choose between the stages' best checkpoints (stage 1 MoE, stage 2 MoE + O2SP) and between
   plain and 8-view TTA inference on the *validation part of the train split*;
2. fit the decision threshold on the same validation chips (best change-class F1) and store it
   in the checkpoint, where ``m2cd detect`` reads it;
3. write the weights as fp16 safetensors with the provenance a user needs (data, split, recipe,
   command, bands, SAR units and normalisation, validation metrics).

The test split is not read here: ``python -m eval.ombria model --checkpoint m2cd/weights/<name>``
scores what was kept, once.

    python -m eval.ship_model --run /work/runs/ombria --name ombria_mit_b0
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import typer

import m2cd
from eval.ombria import predict_areas
from m2cd.checkpoint import update_provenance
from m2cd.metrics import ConfusionMatrix
from m2cd.pretrained import PROBE_PIXELS, probe_output
from pipeline.training.config import load_train_config
from pipeline.training.data import IGNORE, LabelledArea, load_areas
from pipeline.training.evaluate import fit_threshold
from pipeline.training.trainer import recipe_channels

app = typer.Typer(add_completion=False, help=__doc__.split("\n\n")[0])
WEIGHTS = Path(__file__).resolve().parents[1] / "m2cd" / "weights"


def _f1_at(probs: list[np.ndarray], areas: list[LabelledArea], t: float) -> dict[str, float]:
    cm = ConfusionMatrix(2, ignore=IGNORE)
    for p, a in zip(probs, areas, strict=True):
        cm.update((p >= t).astype(np.int64), a.label)
    d = cm.to_dict()
    return {k: round(float(d[k]), 4) for k in ("f1", "iou", "precision", "recall")}


def _fit(probs: list[np.ndarray], areas: list[LabelledArea]) -> float:
    prob = np.concatenate([p.ravel() for p in probs])
    label = np.concatenate([a.label.ravel() for a in areas])
    return float(fit_threshold(prob, label)[0])


@app.command()
def main(
    run: Annotated[Path, typer.Option(help="Training run directory (configs/train/ombria.yaml).")],
    name: Annotated[str, typer.Option(help="Folder name under m2cd/weights/.")] = "ombria_mit_b0",
    recipe: Annotated[
        str, typer.Option(help="The recipe's name, for the card (the run's own config is read).")
    ] = "ombria",
    out: Annotated[
        Path | None,
        typer.Option(help="Write here instead of m2cd/weights/<name> (to compare runs)."),
    ] = None,
    command: Annotated[str, typer.Option(help="The exact training command, for the card.")] = "",
    tta: Annotated[
        bool, typer.Option(help="Also try 8-view TTA for each stage (8× slower).")
    ] = True,
) -> None:
    """Select on validation, fit the threshold, write the fp16 checkpoint and print the choice."""
    cfg = load_train_config(json.loads((run / "train_config.json").read_text()))
    train, val = load_areas(cfg.data, cfg.detect, recipe_channels(cfg))
    candidates = {s.name: (run / "stages" / s.name / "best") for s in cfg.stages[:-1]}
    candidates[cfg.stages[-1].name] = run / "best"
    table: dict[str, Any] = {}
    best: tuple[float, str, bool, float] | None = None
    for stage, ckpt in candidates.items():
        for use_tta in (False, True) if tta else (False,):
            probs = predict_areas(ckpt, val, use_tta)
            t = _fit(probs, val)
            row = {"at_0.5": _f1_at(probs, val, 0.5), "threshold": t, "at_t": _f1_at(probs, val, t)}
            table[f"{stage}{' +tta' if use_tta else ''}"] = row
            typer.echo(f"{stage:6s} tta={use_tta!s:5s} {json.dumps(row)}", err=True)
            if best is None or row["at_t"]["f1"] > best[0]:
                best = (row["at_t"]["f1"], stage, use_tta, t)
    assert best is not None
    _, stage, chosen_tta, threshold = best
    model = m2cd.load_checkpoint(candidates[stage])
    source = json.loads((candidates[stage] / "checkpoint.json").read_text())["provenance"]
    provenance = {
        **source,
        "shipped_as": name,
        "data": {
            "dataset": "OMBRIA (Drakonakis et al., IEEE JSTARS 2022), github geodrak/OMBRIA@38a4903",
            "train": f"{len(train)} chips",
            "validation": f"{len(val)} chips: seeded {cfg.data.chips.val_fraction:.0%} of train"
            if cfg.data.chips
            else None,
        },
        "recipe": recipe,
        "command": command,
        "selected": {
            "stage": stage,
            "tta": chosen_tta,
            "by": "validation change-class F1 at the fitted threshold",
        },
        "threshold": round(threshold, 4),
        "tta": chosen_tta,
        "validation": table,
        "inputs": {
            "optical_bands": ["red", "green", "blue"],
            "sar_bands": ["VV"],
            "sar": "σ⁰ in dB (float or linear power GeoTIFFs as they are; 8-bit renderings need "
            "sar.units=db with sar.dn_to_db)",
            "normalisation": cfg.detect.model_dump(mode="json"),
        },
    }
    out = out or WEIGHTS / name
    m2cd.save_checkpoint(model, out, provenance, dtype=torch.float16)
    # the probe is computed on the fp16 weights as they load, which is what users get
    update_provenance(
        out,
        {"probe": {"pixels": PROBE_PIXELS, "probability": probe_output(m2cd.load_checkpoint(out))}},
    )
    digest = m2cd.checkpoint_digest(out)
    typer.echo(
        json.dumps(
            {
                "path": str(out),
                "digest": digest,
                "stage": stage,
                "tta": chosen_tta,
                "threshold": threshold,
                "validation": table[f"{stage}{' +tta' if chosen_tta else ''}"],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    app()
