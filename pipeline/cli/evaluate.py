"""`m2cd evaluate`: score a predicted change mask against a label raster, print JSON metrics."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from pipeline.errors import ConfigError


def evaluate_command(
    label: Annotated[
        str, typer.Option("--label", help="Label raster (0/1 with 255 ignore, or 0/255).")
    ],
    pred: Annotated[
        str | None,
        typer.Option("--pred", help="Predicted mask (0/1 with 255 nodata, or 0/255)."),
    ] = None,
    prob: Annotated[
        str | None,
        typer.Option(
            "--prob",
            help="Change probability (change_prob.tif): fit the threshold with the best F1 "
            "in --window (use labelled pixels the model will not be judged on).",
        ),
    ] = None,
    window: Annotated[
        str | None, typer.Option(help="Only this pixel window R0:R1,C0:C1 (e.g. the test part).")
    ] = None,
) -> None:
    """Change-class precision/recall/F1/IoU, OA and kappa; nodata in either raster is not counted.

    With --prob instead of --pred: the threshold (0.05 … 0.95) with the best change F1, its
    metrics and F1 per threshold; pass it to `m2cd detect --threshold`.
    """

    # deferred: pipeline.training pulls torch (+2.7 s); m2cd --help must not
    from pipeline.training.config import parse_window
    from pipeline.training.evaluate import evaluate_files, fit_threshold_files

    if (pred is None) == (prob is None):
        raise ConfigError("give exactly one of --pred MASK or --prob PROBABILITY")
    win = parse_window(window) if window else None
    if pred is not None:
        metrics = evaluate_files(pred, label, win)
    else:
        metrics = fit_threshold_files(prob, label, win)
    typer.echo(json.dumps(metrics, indent=2))
