"""`m2cd view OUT`: a local web map of a finished run's products."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def view_command(
    out: Annotated[Path, typer.Argument(help="OUT directory of a finished `m2cd detect` run.")],
    host: Annotated[str, typer.Option(help="Address to listen on (local only by default).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="Port (0: any free port).")] = 8000,
    max_size: Annotated[
        int, typer.Option(help="Long side of the map's image layers in pixels.")
    ] = 2048,
) -> None:
    """Serve a map of OUT: optical scene, change layer (opacity), polygons with areas, figures."""
    # deferred: the viewer pulls rasterio, pyogrio and PIL (~1.2 s); m2cd --help must not
    from pipeline.viewer.server import serve

    serve(out, host, port, max_size)
