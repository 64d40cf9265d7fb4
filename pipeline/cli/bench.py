"""`m2cd bench ...`: the `bench` sub-app (other benchmarks add their commands to ``bench_app``)."""

from __future__ import annotations

import json

import typer

from pipeline.errors import ConfigError


def bench_model(
    model: str = typer.Option("m2cd_mit_b1", "--model", help="Named config in configs/model/."),
    batch: int = typer.Option(8, "--batch", min=1),
    size: int = typer.Option(256, "--size", min=32),
    repeats: int = typer.Option(5, "--repeats", min=1),
    warmup: int = typer.Option(2, "--warmup", min=0),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda[:N]"),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Eval-forward throughput (pairs/s) and GFLOP/s in fp32 and bf16 autocast vs the matmul peak."""
    # deferred: torch (+2.7 s measured over what m2cd --help loads) is not loaded by --help
    import torch

    import m2cd
    from pipeline.bench.model import format_table, run

    if model not in m2cd.available_configs():
        raise ConfigError(
            f"--model: unknown model config {model!r}; choose one of {m2cd.available_configs()}"
        )
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device: {device!r} requested but CUDA is not available")
    result = run(model, batch=batch, size=size, repeats=repeats, warmup=warmup, device=device)
    typer.echo(json.dumps(result) if as_json else format_table(result))


def bench_pipeline(
    model: str = typer.Option("m2cd_mit_b0", "--model", help="Named config (random weights)."),
    size: int | None = typer.Option(
        None,
        "--size",
        min=64,
        help="Synthetic scene side in pixels [default: 2048; 4096 with --null-model].",
    ),
    tile: int = typer.Option(256, "--tile", min=32),
    overlap: int = typer.Option(64, "--overlap", min=0),
    block: int = typer.Option(2048, "--block", min=64),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda"),
    repeats: int | None = typer.Option(
        None, "--repeats", min=1, help="[default: 1; 3 with --null-model]"
    ),
    null_model: bool = typer.Option(
        False,
        "--null-model",
        help="The engine's own ceiling: a model that costs nothing (with --model's bands), "
        "against the I/O limit, with the time split by stage.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """End-to-end detect tiles/s ÷ in-memory batched forward tiles/s (same tiles and model)."""
    if null_model:
        # deferred: the null-model bench imports torch (+2.7 s), which m2cd --help must not
        from pipeline.bench import null_pipeline

        result = null_pipeline.run(
            size or 4096,
            tile,
            overlap,
            block,
            batch_size,
            "cpu" if device == "auto" and not _cuda() else device,
            repeats or 3,
            bands_of=model,
        )
        typer.echo(json.dumps(result) if as_json else null_pipeline.format_table(result))
        return
    # deferred: torch (+2.7 s measured over what m2cd --help loads) is not loaded by --help
    from pipeline.bench.pipeline import format_table, run

    result = run(model, size or 2048, tile, overlap, block, batch_size, device, repeats or 1)
    typer.echo(json.dumps(result) if as_json else format_table(result))


def _cuda() -> bool:
    # deferred: torch (+2.7 s) stays out of m2cd --help
    import torch

    return torch.cuda.is_available()


def bench_memory(
    small: int = typer.Option(4096, "--small", min=64, help="Side of the small scene."),
    large: int = typer.Option(16384, "--large", min=64, help="Side of the large scene."),
    model: str = typer.Option("tiny", "--model", help="A cheap named config (random weights)."),
    tile: int = typer.Option(256, "--tile", min=32),
    overlap: int = typer.Option(64, "--overlap", min=0),
    block: int = typer.Option(2048, "--block", min=64),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
    device: str = typer.Option("cpu", "--device", help="auto, cpu or cuda"),
    cache_dir: str | None = typer.Option(
        None, "--cache-dir", help="Keep the synthetic inputs here and reuse them next time."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Peak RSS of the large scene ÷ the small one, each detect in a fresh subprocess."""
    # deferred: torch (+2.7 s measured over what m2cd --help loads) is not loaded by --help
    from pipeline.bench.memory import format_table, run

    result = run(small, large, model, tile, overlap, block, batch_size, device, None, cache_dir)
    typer.echo(json.dumps(result) if as_json else format_table(result))


def bench_train(
    model: str = typer.Option("m2cd_mit_b0", "--model", help="Named config in configs/model/."),
    batch: int = typer.Option(16, "--batch", min=1),
    size: int = typer.Option(128, "--size", min=32),
    repeats: int = typer.Option(5, "--repeats", min=1),
    warmup: int = typer.Option(2, "--warmup", min=0),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:N]"),
    o2sp: bool = typer.Option(False, "--o2sp", help="Train with the O2SP branch (stage 2)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Training pairs/s (forward + backward + step) beside eval pairs/s, in the same run."""
    # deferred: torch (+2.7 s measured over what m2cd --help loads) is not loaded by --help
    from pipeline.bench.train import format_table, run

    overrides = {"o2sp.enabled": True} if o2sp else None
    result = run(model, batch, size, repeats, warmup, device, overrides=overrides)
    typer.echo(json.dumps(result) if as_json else format_table(result))
