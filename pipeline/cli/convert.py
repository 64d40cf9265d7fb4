"""`m2cd convert-checkpoint`: an official open-cd/mmseg M²CD .pth → our checkpoint directory."""

from __future__ import annotations

from pathlib import Path

import typer

from pipeline.errors import InputError, OutputExistsError


def convert_checkpoint(
    source: Path = typer.Argument(..., help="Official .pth (MiT-b0/b1; none, MoE or MoE+O2SP)."),
    output: Path = typer.Argument(..., help="Checkpoint directory to write."),
    o2sp: bool = typer.Option(False, "--o2sp", help="Record o2sp.enabled (a MoE+O2SP checkpoint)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing checkpoint."),
) -> None:
    """Convert weights loaded without unpickling objects (torch.load weights_only=True)."""
    # deferred: m2cd imports torch (+2.7 s); m2cd --help must not
    from m2cd.checkpoint import CheckpointError
    from m2cd.convert import convert_checkpoint as convert

    if (output / "checkpoint.json").exists() and not overwrite:
        raise OutputExistsError(f"{output}: a checkpoint exists; pass --overwrite to replace it")
    try:
        digest = convert(source, output, o2sp=o2sp)
    except CheckpointError as exc:
        raise InputError(str(source), str(exc)) from exc
    typer.echo(f"wrote {output} ({digest})")
