"""`m2cd evaluate`: score a predicted change mask against a label raster, print JSON metrics."""

from __future__ import annotations

from typing import Annotated

import typer

from pipeline.cli import app


@app.command("evaluate")
def evaluate_command(
    pred: Annotated[
        str, typer.Option("--pred", help="Predicted mask (0/1 with 255 nodata, or 0/255).")
    ],
    label: Annotated[
        str, typer.Option("--label", help="Label raster (0/1 with 255 ignore, or 0/255).")
    ],
    window: Annotated[
        str | None, typer.Option(help="Only this pixel window R0:R1,C0:C1 (e.g. the test part).")
    ] = None,
) -> None:
    """Change-class precision/recall/F1/IoU, OA and kappa; nodata in either raster is not counted."""
    import json

    from pipeline.training.config import parse_window
    from pipeline.training.evaluate import evaluate_files

    metrics = evaluate_files(pred, label, parse_window(window) if window else None)
    typer.echo(json.dumps(metrics, indent=2))
