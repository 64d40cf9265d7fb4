"""Pixel-level commands of the `m2cd` CLI (usable without Prefect).

Each command lives in its own module and is mounted on `app` by `register`.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="m2cd",
    help="Optical-to-SAR change detection with M²CD: model, scene engine, flows.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def register() -> typer.Typer:
    """Mount every pixel command on the app (imports are lazy inside each command)."""
    from pipeline.cli import commands  # noqa: F401  (modules attach themselves to `app`)

    return app
