"""`m2cd clean OUT`: list the staging runs kept under `OUT/.m2cd/` and, with `--yes`, remove them.

A dry run by default: staging holds finished blocks, hours of compute on a big scene that the same
`detect` command would resume, so deleting it is asked for explicitly (as `git clean` wants `-f`).
It takes the output's writer lease first, so it never removes the staging of a run in progress.
"""

from __future__ import annotations

from typing import Annotated

import typer


def clean_command(
    out: Annotated[str, typer.Argument(help="Output prefix (directory or s3://) of detect runs.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Remove what is listed.")] = False,
    older_than: Annotated[
        float | None,
        typer.Option(help="Only staging runs untouched for this many days (default: all)."),
    ] = None,
) -> None:
    """List the staging runs of OUT (unfinished or interrupted runs); remove them with --yes."""
    # deferred: CLI command: the engine and storage stay out of m2cd --help
    from pipeline.engine.staging import DAY_S, list_staging
    from pipeline.io import storage
    from pipeline.io.lease import writer_lease
    from pipeline.io.paths import resolve_output

    prefix = resolve_output(out)
    prefix = prefix.rstrip("/") if storage.is_remote(prefix) else prefix
    if not storage.exists(prefix):
        typer.echo(f"{prefix}: no such output: nothing to clean")
        return
    with writer_lease(prefix, "clean"):
        runs = [
            r for r in list_staging(prefix) if older_than is None or r.age_s > older_than * DAY_S
        ]
        total = 0
        for run in runs:
            size = int(storage.fs_for(run.uri).du(run.uri, total=True))
            total += size
            typer.echo(f"{run.describe()}, {size / 2**20:.1f} MiB")
            if yes:
                storage.remove(run.uri, recursive=True)
    what = f"{len(runs)} staging run(s), {total / 2**20:.1f} MiB"
    if not runs:
        typer.echo(f"{prefix}: no staging runs")
    elif yes:
        typer.echo(f"removed {what}")
    else:
        typer.echo(f"{what}; nothing removed (dry run): pass --yes to remove them")
