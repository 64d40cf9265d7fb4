"""The root of the `m2cd` CLI: `--version`, `-v/--verbose`, `-q/--quiet`, and the one log handler.

One plain `logging` handler on stderr (no rich): stdout stays for what scripts read (`--json`,
`train`'s result), and `log.info` from pipeline, flows and m2cd is seen by default. Python warnings
go through the same handler as one `warning: <message>` line, without the source line that
`warnings.formatwarning` appends (it points into our code, not at anything the user can change).
"""

from __future__ import annotations

import logging
import os
import sys
import tomllib
import warnings
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any

import typer

DISTRIBUTION = "m2cd-pipeline"
OUR_LOGGERS = ("pipeline", "flows", "m2cd")
_HANDLER_NAME = "m2cd-cli"


def version() -> str:
    """The installed distribution's version, else the checkout's pyproject (a bare clone)."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
        return str(tomllib.loads(pyproject.read_text())["project"]["version"])


class _PlainFormatter(logging.Formatter):
    """`message` for info, `level: message` otherwise (as rio and git print them)."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.exc_info and record.levelno >= logging.ERROR:
            text += "\n" + self.formatException(record.exc_info)
        if record.levelno == logging.INFO:
            return text
        return f"{record.levelname.lower()}: {text}"


def _show_warning(message: Any, category: type, filename: str, lineno: int, *_: Any) -> None:
    logging.getLogger("py.warnings").warning("%s", message)


def configure_logging(verbosity: int) -> None:
    """One stderr handler on the root logger (replacing ours from an earlier call); our loggers
    at INFO (DEBUG with -v, WARNING with -q), everyone else's at WARNING (DEBUG with -vv)."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(_PlainFormatter())
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbosity >= 2 else logging.WARNING)
    ours = {-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG)
    for name in OUR_LOGGERS:
        logging.getLogger(name).setLevel(ours)
    warnings.showwarning = _show_warning  # flows.cli.main restores it (warnings.catch_warnings)
    if verbosity < 0:
        os.environ["TQDM_DISABLE"] = "1"  # -q: no progress bars either (tqdm reads it per bar)


def reset_logging() -> None:
    """Undo `configure_logging` (for callers of `flows.cli.main` in-process, such as tests): the
    handler holds the stderr of the call that made it."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(handler)
    for name in OUR_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"m2cd {version()}")
        raise typer.Exit()


def root_callback(
    verbose: Annotated[
        int,
        typer.Option("--verbose", "-v", count=True, help="More log lines (-vv: libraries too)."),
    ] = 0,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Warnings and errors only, no progress bars.")
    ] = False,
    version_: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Optical-to-SAR change detection with M²CD: model, scene engine, flows."""
    configure_logging(-1 if quiet else verbose)
