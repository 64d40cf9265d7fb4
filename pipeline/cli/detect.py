"""`m2cd detect`: change products for one optical/SAR pair (plan, progress bar, summary)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def detect_command(
    optical: Annotated[
        str,
        typer.Argument(
            help="Pre-event optical scene: a raster (path, s3://, https://, /vsicurl/, gs://, "
            "az://), bands as B02.tif,B03.tif,B04.tif,B08.tif, a VRT, or a STAC Item (.json)."
        ),
    ],
    sar: Annotated[
        str,
        typer.Argument(help="Post-event SAR scene: the same forms (e.g. VV.tif,VH.tif)."),
    ],
    out: Annotated[str, typer.Option("--out", "-o", help="Output prefix (directory or s3://).")],
    checkpoint: Annotated[
        str | None, typer.Option(help="Checkpoint directory (local or s3:// prefix).")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(help="Model config name, randomly initialised (benchmarks only)."),
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="Pipeline config YAML (or a name in configs/pipeline/).")
    ] = None,
    tile: Annotated[int | None, typer.Option(help="Tile size in pixels [256].")] = None,
    overlap: Annotated[int | None, typer.Option(help="Tile overlap in pixels [64].")] = None,
    block: Annotated[int | None, typer.Option(help="Block core = Zarr chunk size [2048].")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Tiles per batch [8].")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda [auto].")] = None,
    threshold: Annotated[float | None, typer.Option(help="Change threshold [0.5].")] = None,
    tta: Annotated[
        bool | None,
        typer.Option(
            "--tta/--no-tta", help="Average over the 8 flips/rotations of each tile (8× the time)."
        ),
    ] = None,
    diagnostics: Annotated[
        bool,
        typer.Option(
            "--diagnostics",
            help="Also write routing_optical.tif and routing_sar.tif: the top-1 MoE expert of "
            "each pixel's token per stage, and each expert's share in the summary.",
        ),
    ] = False,
    workers: Annotated[
        int,
        typer.Option(
            help="Blocks run at once, as threads of this process (products are identical for any count)."
        ),
    ] = 1,
    overwrite: Annotated[bool, typer.Option(help="Replace products of another run.")] = False,
    pre_date: Annotated[
        str | None,
        typer.Option(help="Optical acquisition (ISO date/time) [from the STAC Item or tags]."),
    ] = None,
    post_date: Annotated[
        str | None,
        typer.Option(help="SAR acquisition (ISO date/time) [from the STAC Item or tags]."),
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Config override key=value (repeatable).")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show the progress bar.")] = True,
    json_: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print the run summary as one JSON object on stdout (for scripts); the plan, "
            "progress and logs go to stderr.",
        ),
    ] = False,
) -> None:
    """Detect change between OPTICAL (pre-event) and SAR (post-event); products go to OUT."""
    # deferred: pipeline.config imports m2cd, hence torch (+2.7 s); m2cd --help must not
    from pipeline.config import load_detect_config, parse_overrides
    from pipeline.engine.local import detect
    from pipeline.engine.request import validate_request

    overrides = parse_overrides(set_ or [])
    flags = {
        "tiling.tile": tile,
        "tiling.overlap": overlap,
        "tiling.block": block,
        "inference.batch_size": batch_size,
        "inference.device": device,
        "products.threshold": threshold,
        "inference.tta": tta,
        "products.diagnostics": True if diagnostics else None,
    }
    overrides.update({k: v for k, v in flags.items() if v is not None})
    cfg = load_detect_config(config if config is not None else "default", overrides)
    request = validate_request(
        optical=optical,
        sar=sar,
        out=out,
        checkpoint=checkpoint,
        model=model,
        config=cfg,
        overwrite=overwrite,
        pre_date=pre_date,
        post_date=post_date,
    )
    echo = (lambda line: typer.echo(line, err=True)) if json_ else typer.echo
    summary = detect(request, progress=progress, workers=workers, echo=echo)
    if json_:
        typer.echo(summary.model_dump_json())
        return
    area = f", {summary.changed_km2:.4f} km² changed" if summary.changed_km2 is not None else ""
    typer.echo(
        f"done in {summary.seconds:.1f} s: {summary.tiles_run} tile runs "
        f"({summary.tiles_skipped} skipped without valid pixels), {summary.blocks} block(s) "
        f"({summary.blocks_resumed} resumed), {summary.changed_px} changed px{area}"
    )
    for name, uri in summary.products.items():
        typer.echo(f"  {name}: {uri}")
    for row in summary.routing or []:
        typer.echo(
            f"  routing stage {row['stage']}: optical {_shares(row['optical_share'])} | "
            f"SAR {_shares(row['sar_share'])} (modality distance {row['modality_tv_distance']})"
        )


def _shares(values: list[float]) -> str:
    """Expert shares as `e0 41% e1 9% ...` (one line per stage in the summary)."""
    return " ".join(f"e{i} {v:.0%}" for i, v in enumerate(values))
