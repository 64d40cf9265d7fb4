"""`m2cd synth`: a synthetic georeferenced optical/SAR pair and its flood change label."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.errors import ConfigError


def synth_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")],
    size: Annotated[tuple[int, int], typer.Option(help="Scene size H W in pixels.")] = (1024, 1024),
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same bytes).")] = 0,
    crs: Annotated[
        str, typer.Option(help="CRS, e.g. EPSG:32633 (UTM) or EPSG:4326.")
    ] = "EPSG:32633",
    change_fraction: Annotated[
        float, typer.Option(help="Fraction of the scene that floods (the change).")
    ] = 0.05,
    sar_bands: Annotated[int, typer.Option(help="1 (VV) or 2 (VV+VH).")] = 2,
    looks: Annotated[float, typer.Option(help="Equivalent number of looks of the speckle.")] = 4.0,
    nodata_strip: Annotated[
        float,
        typer.Option(help="Width fraction: optical nodata (east edge) and SAR zero fill (west)."),
    ] = 0.0,
    overwrite: Annotated[bool, typer.Option(help="Replace existing files in OUT.")] = False,
) -> None:
    """Write OUT/optical.tif (uint16 B,G,R,NIR), OUT/sar.tif (σ⁰ linear), OUT/label.tif (0/1)."""
    # deferred: pydantic + pipeline.config (m2cd, hence torch: +2.7 s) stay out of m2cd --help
    from pydantic import ValidationError

    from pipeline.config import format_validation_error
    from pipeline.synth import SynthSpec, synth_pair

    try:
        spec = SynthSpec(
            size=size,
            seed=seed,
            crs=crs,
            change_fraction=change_fraction,
            sar_bands=sar_bands,
            looks=looks,
            nodata_strip=nodata_strip,
        )
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, "m2cd synth")) from None
    result = synth_pair(out, spec, overwrite=overwrite)
    h, w = spec.size
    typer.echo(
        f"wrote {result.optical}, {result.sar}, {result.label}: {h}×{w} px, {spec.crs}, "
        f"change {100 * result.change_fraction:.2f} % ({result.seconds:.1f} s)"
    )
