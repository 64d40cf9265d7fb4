"""`m2cd train`: fine-tune M²CD from a recipe file, or from one scene triple given on the command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline.errors import ConfigError


def held_out_windows(label: str, windows: list[str], optical: str) -> tuple[list[str], list[str]]:
    """The training windows split for validation (pipeline.training.holdout), as CLI strings."""
    # deferred: pipeline.training imports rasterio and torch, which `m2cd --help` does not need
    from pipeline.training.config import parse_window
    from pipeline.training.holdout import HELD_OUT, hold_out, label_change_share

    parsed = [parse_window(w) for w in windows]
    train, val = hold_out(parsed, HELD_OUT, label_change_share(label, parsed, optical))
    text = [f"{r0}:{r1},{c0}:{c1}" for r0, r1, c0, c1 in train + val]
    return text[: len(train)], text[len(train) :]


DEFAULT_RECIPE = "finetune"  # configs/train/finetune.yaml: the default fine-tuning recipe


def train_command(
    config: Annotated[
        str | None,
        typer.Option(
            "--config", "-c", help="Recipe YAML (or a name in configs/train/) [finetune]."
        ),
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Run directory (best/, last/, metrics.jsonl).")
    ] = Path("runs/train"),
    resume: Annotated[
        bool, typer.Option(help="Continue the run in --out from its last checkpoint.")
    ] = False,
    optical: Annotated[str | None, typer.Option(help="Optical raster (local or s3://).")] = None,
    sar: Annotated[str | None, typer.Option(help="SAR raster on the optical grid.")] = None,
    label: Annotated[
        str | None, typer.Option(help="Label raster: 0/1 (255 ignore) or 0/255.")
    ] = None,
    train_window: Annotated[
        list[str] | None, typer.Option(help="R0:R1,C0:C1 pixel window to train on (repeatable).")
    ] = None,
    val_window: Annotated[
        list[str] | None, typer.Option(help="R0:R1,C0:C1 window to validate on (repeatable).")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="Model config name, e.g. siam_r18, tiny [the recipe's; finetune: m2cd_mit_b0 from the shipped model; another name trains from scratch]."
        ),
    ] = None,
    steps: Annotated[
        int | None, typer.Option(help="Training steps (last stage) [the recipe's; finetune: 300].")
    ] = None,
    init: Annotated[
        str | None,
        typer.Option(
            help="Start the last stage from this checkpoint (e.g. a pretraining's best) [none: random init]."
        ),
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Chips per step [the recipe's; finetune: 8].")
    ] = None,
    tile: Annotated[
        int | None, typer.Option(help="Chip size in pixels [the recipe's; finetune: 128].")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Random seed [the recipe's; finetune: 0].")
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="auto, cpu, cuda or cuda:N [the recipe's; finetune: auto].")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show the progress bar.")] = True,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Recipe override KEY=VALUE (YAML value), e.g. optim.lr=3e-4."),
    ] = None,
) -> None:
    """Train; writes OUT/best and OUT/last (each loadable by `m2cd detect --checkpoint`)."""

    # deferred: pydantic + pipeline.config (m2cd, hence torch: +2.7 s) stay out of m2cd --help
    from pydantic import ValidationError

    from pipeline.config import format_validation_error, parse_overrides
    from pipeline.training.config import load_train_config
    from pipeline.training.trainer import train

    overrides: dict[str, Any] = {}
    scene_flags = [optical, sar, label]
    if any(v is not None for v in scene_flags) or train_window:
        if not all(v is not None for v in scene_flags) or not train_window:
            raise ConfigError(
                "the one-scene shorthand needs --optical, --sar, --label and --train-window"
            )
        train_windows, val_windows = list(train_window), list(val_window or [])
        if not val_windows:  # the threshold and the best checkpoint need labelled held-out pixels
            train_windows, val_windows = held_out_windows(label, train_windows, optical)
            typer.echo(
                "no --val-window: validating on a fifth of each training window "
                f"({', '.join(val_windows)})",
                err=True,
            )
        overrides["data.scenes"] = [
            {
                "optical": optical,
                "sar": sar,
                "label": label,
                "train": [{"window": w} for w in train_windows],
                "val": [{"window": w} for w in val_windows],
            }
        ]
        overrides["data.folders"] = None
    elif config is None:
        raise ConfigError("give --config, or --optical/--sar/--label/--train-window for one scene")
    if not progress:
        overrides["progress"] = False
    for key, value in {
        "data.batch_size": batch_size,
        "data.tile": tile,
        "seed": seed,
        "device": device,
    }.items():
        if value is not None:
            overrides[key] = value
    overrides.update(parse_overrides(set_ or []))
    cfg = load_train_config(config or DEFAULT_RECIPE, overrides)
    if model is not None or steps is not None or init is not None:
        last = cfg.stages[-1]
        update: dict[str, Any] = {
            k: v for k, v in {"model": model, "steps": steps, "init": init}.items() if v is not None
        }
        if model is not None and init is None and (last.init or "").startswith("shipped"):
            update["init"] = None  # the shipped weights fit the recipe's model, not another one
            typer.echo(f"--model {model}: training from scratch (no --init given)", err=True)
        cfg = cfg.model_copy(update={"stages": [*cfg.stages[:-1], last.model_copy(update=update)]})
        try:
            cfg = type(cfg).model_validate(cfg.model_dump())
        except ValidationError as exc:  # e.g. --steps 0: name the flag's field, no traceback
            raise ConfigError(format_validation_error(exc, "command line")) from None
    result = train(cfg, out, resume=resume)
    typer.echo(
        json.dumps(
            {
                "best": str(result.best),
                "last": str(result.last),
                "steps": result.steps,
                "best_val": result.best_metrics,
                "metrics": str(Path(out) / "metrics.jsonl"),
            },
            indent=2,
        )
    )
