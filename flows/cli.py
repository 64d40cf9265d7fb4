"""The `m2cd` console script: pipeline commands plus orchestration commands (serve, labels).

flows is the top layer, so this is where the whole CLI is composed: `pipeline.cli.build_app`'s
pixel commands, then the two that need Prefect, named here explicitly.
"""

from __future__ import annotations

import os
import sys
import warnings

import click
import typer

from flows import labels, overhead, serve
from flows.faults import is_transient, permanent_os_error
from pipeline.cli import CONTEXT
from pipeline.cli import build_app as build_pixel_app
from pipeline.cli.interrupt import Interrupted, ignore_further_interrupts
from pipeline.cli.root import reset_logging
from pipeline.errors import M2CDError
from pipeline.io.storage import redact

PROG = "m2cd"

try:  # typer >= 0.2x parses with its own copy of click; older ones with click itself
    from typer._click import exceptions as _vendored
except ImportError:  # pragma: no cover - depends on the installed typer
    _vendored = click.exceptions
USAGE_ERRORS = (click.UsageError, _vendored.UsageError)
CLICK_ERRORS = (click.ClickException, _vendored.ClickException)


def build_app() -> typer.Typer:
    """The full `m2cd` app: every pixel command plus `serve` and `labels push`."""
    app = build_pixel_app()
    app.command("serve")(serve.serve_command)
    bench_app = next(g.typer_instance for g in app.registered_groups if g.name == "bench")
    bench_app.command("serve")(overhead.bench_serve)  # needs Prefect: registered here
    labels_app = typer.Typer(
        help="Training labels: publish new labels and trigger retraining.",
        context_settings=CONTEXT,
        rich_markup_mode=None,
    )
    labels_app.command("push")(labels.push_command)
    app.add_typer(labels_app, name="labels")
    return app


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit status (the console script passes it to `sys.exit`).

    0 done; 2 a usage error, bad input or config, or a permanent OS error (one line each); 3 a
    transient fault (retry later: the same command resumes); 130 Ctrl-C. Anything else is a bug
    and keeps its traceback. The warnings filter is restored on return (tests call this in-process).
    """
    tqdm_disable = os.environ.get("TQDM_DISABLE")
    try:
        with warnings.catch_warnings():
            return _run(build_app(), argv)
    finally:
        reset_logging()
        if tqdm_disable is None:
            os.environ.pop("TQDM_DISABLE", None)


def _run(app: typer.Typer, argv: list[str] | None) -> int:
    try:
        result = app(args=argv, prog_name=PROG, standalone_mode=False)
    except USAGE_ERRORS as exc:
        return _usage_error(exc)
    except CLICK_ERRORS as exc:  # e.g. a --config file that does not exist
        print(f"error: {exc.format_message()}", file=sys.stderr)
        return exc.exit_code
    except M2CDError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        if not _is_checkpoint_error(exc):
            raise
        print(f"error: {exc}", file=sys.stderr)  # names the checkpoint path and the problem
        return 2
    except Interrupted as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        return 130
    except (KeyboardInterrupt, click.Abort):  # Ctrl-C outside a long command (e.g. while importing)
        ignore_further_interrupts()
        print("interrupted", file=sys.stderr)
        return 130
    except SystemExit as exc:  # typer.Exit / click exit codes
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    except OSError as exc:
        if (line := permanent_os_error(exc)) is not None:
            print(f"error: {redact(line)}", file=sys.stderr)
            return 2
        return _transient(exc)
    except Exception as exc:  # noqa: BLE001  (only transient faults are handled; others re-raised)
        return _transient(exc)
    return result if isinstance(result, int) else 0


def _is_checkpoint_error(exc: BaseException) -> bool:
    """m2cd's CheckpointError (e.g. `train --init` naming no checkpoint), matched without
    importing m2cd here: that imports torch, which `m2cd --help` does not need (~5 s)."""
    module = sys.modules.get("m2cd.checkpoint")
    return module is not None and isinstance(exc, module.CheckpointError)


def _usage_error(exc: click.UsageError) -> int:
    """One line naming the problem, then the usage and where the help is (as git and rio do)."""
    if type(exc).__name__ == "NoArgsIsHelpError":  # bare `m2cd` or `m2cd bench`: the help itself
        exc.show()
        return exc.exit_code
    print(f"error: {exc.format_message()}", file=sys.stderr)
    if exc.ctx is not None:
        print(f"{exc.ctx.get_usage()}  (try '{exc.ctx.command_path} --help')", file=sys.stderr)
    return exc.exit_code


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
