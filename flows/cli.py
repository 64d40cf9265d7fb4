"""The `m2cd` console script: pipeline commands plus orchestration commands (serve, labels).

flows is the top layer, so this is where the whole CLI is composed: `pipeline.cli.build_app`'s
pixel commands, then the two that need Prefect, named here explicitly.
"""

from __future__ import annotations

import sys

import typer

from flows import labels, serve
from flows.faults import is_transient
from pipeline.cli import build_app as build_pixel_app
from pipeline.errors import M2CDError
from pipeline.io.storage import redact


def build_app() -> typer.Typer:
    """The full `m2cd` app: every pixel command plus `serve` and `labels push`."""
    app = build_pixel_app()
    app.command("serve")(serve.serve_command)
    labels_app = typer.Typer(help="Training labels: publish new labels and trigger retraining.")
    labels_app.command("push")(labels.push_command)
    app.add_typer(labels_app, name="labels")
    return app


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; expected errors print one line and exit 2, transient faults exit 3."""
    app = build_app()
    try:
        app(args=argv, standalone_mode=False)
    except M2CDError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # typer/click exit codes
        return int(exc.code or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001  (only transient faults are handled; others re-raised)
        return _transient(exc)
    return 0


def _transient(exc: Exception) -> int:
    """Storage/network outages and lost workers: one clear line and exit code 3 (retry later);
    finished blocks are kept, so the same command resumes. Anything else is a bug: re-raised."""
    if not is_transient(exc):
        raise exc
    print(
        f"error: storage or network unavailable ({type(exc).__name__}: {redact(str(exc))}); "
        "finished blocks are kept: run the same command again to resume",
        file=sys.stderr,
    )
    return 3


if __name__ == "__main__":
    sys.exit(main())
