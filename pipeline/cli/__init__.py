"""The pixel-level commands of the `m2cd` CLI (usable without Prefect), composed in one place.

Each command is a plain function in its own module; `build_app` is the one place that names them
on the app, so what the CLI offers is read here, not inferred from which modules were imported.
`flows.cli` adds the orchestration commands on top. Command modules import their heavy
dependencies inside the command, so `m2cd --help` stays fast (~1 s instead of ~6 s with torch).
"""

from __future__ import annotations

import typer

from pipeline.cli import bench, clean, convert, detect, evaluate, root, synth, train, view
from pipeline.cli.interrupt import DETECT_HINT, TRAIN_HINT, on_interrupt

CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True}
"""Every command's context: `-h` as well as `--help`, and defaults shown in every help text."""


def build_app() -> typer.Typer:
    """A fresh Typer app with every pixel command (a new one per call: tests compose freely)."""
    app = typer.Typer(
        name="m2cd",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
        rich_markup_mode=None,
        context_settings=CONTEXT,
    )
    app.callback()(root.root_callback)
    app.command("detect")(on_interrupt(DETECT_HINT)(detect.detect_command))
    app.command("clean")(clean.clean_command)
    app.command("synth")(synth.synth_command)
    app.command("train")(on_interrupt(TRAIN_HINT)(train.train_command))
    app.command("evaluate")(evaluate.evaluate_command)
    app.command("convert-checkpoint")(convert.convert_checkpoint)
    app.command("view")(view.view_command)
    bench_app = typer.Typer(
        help="Benchmarks (medians, with a baseline measured in the same run).",
        no_args_is_help=True,
        context_settings=CONTEXT,
        rich_markup_mode=None,
    )
    bench_app.command("model")(bench.bench_model)
    bench_app.command("pipeline")(bench.bench_pipeline)
    bench_app.command("memory")(bench.bench_memory)
    bench_app.command("train")(bench.bench_train)
    app.add_typer(bench_app, name="bench")
    return app
