"""The pixel-level commands of the `m2cd` CLI (usable without Prefect), composed in one place.

Each command is a plain function in its own module; `build_app` is the one place that names them
on the app, so what the CLI offers is read here, not inferred from which modules were imported.
`flows.cli` adds the orchestration commands on top. Command modules import their heavy
dependencies inside the command, so `m2cd --help` stays fast (~1 s instead of ~6 s with torch).
"""

from __future__ import annotations

import typer

from pipeline.cli import bench, convert, detect, evaluate, synth, train, view


def build_app() -> typer.Typer:
    """A fresh Typer app with every pixel command (a new one per call: tests compose freely)."""
    app = typer.Typer(
        name="m2cd",
        help="Optical-to-SAR change detection with M²CD: model, scene engine, flows.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )
    app.command("detect")(detect.detect_command)
    app.command("synth")(synth.synth_command)
    app.command("train")(train.train_command)
    app.command("evaluate")(evaluate.evaluate_command)
    app.command("convert-checkpoint")(convert.convert_checkpoint)
    app.command("view")(view.view_command)
    bench_app = typer.Typer(
        help="Benchmarks (medians, with a baseline measured in the same run).", no_args_is_help=True
    )
    bench_app.command("model")(bench.bench_model)
    bench_app.command("pipeline")(bench.bench_pipeline)
    bench_app.command("memory")(bench.bench_memory)
    bench_app.command("train")(bench.bench_train)
    app.add_typer(bench_app, name="bench")
    return app
