"""`make demo`: the shipped model on real floods, then a fine-tune through `retrain` and its gain.

1. lay OMBRIA's 70 test chips (real Sentinel-2 before / Sentinel-1 after, EMS flood masks; read in
   place from ../shared/data/real, never seen in training) out as one 1792×2560 scene;
2. run the **detect-scene** flow on it with `model=promoted` on an empty registry, which uses the
   shipped default model, and score the flood mask against the EMS masks;
3. fine-tune the shipped model through the **retrain** flow on the left 30 % of the mosaic's
   columns (the `finetune` recipe, a short budget), which registers it and promotes it only if it
   beats the shipped model on the held-out part of those columns;
4. detect again with the fine-tuned model and score both models on the other 70 % of the
   columns: the gain of fine-tuning on labels from the same events.

No PREFECT_API_URL is used: Prefect starts its temporary server itself, with its database under
OUT/.prefect. Output goes to ./demo-out (or --out).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import typer
import yaml

from pipeline.errors import InputError

OMBRIA = Path(__file__).resolve().parents[1].parent / "shared/data/real/ombria_s2pre_s1post_flood"
TRAIN_FRACTION = 0.3  # of the mosaic's columns, for the fine-tune
# Neighbouring chips of the mosaic are unrelated places: tiles of one chip each (256², no overlap,
# the grid anchored at the origin like the chips) keep the model from mixing them (with the
# default 64 px overlap across chip borders the shipped model scored F1 0.672 instead of 0.760).
CHIP_TILES = {"tiling.tile": 256, "tiling.overlap": 0}


def _embedded_prefect(out: Path) -> None:
    """Force the embedded default in this process (before prefect is imported)."""
    os.environ.pop("PREFECT_API_URL", None)
    os.environ["PREFECT_HOME"] = str(out / ".prefect")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")  # workers inherit it
    # first start creates the SQLite database: give a busy 2-core machine time (default 20 s)
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


def _data_spec(scene, width: int, height: int, path: Path) -> Path:
    """The training-data spec (what `m2cd labels push` publishes): the left 30 % of the columns,
    its last sixth held out for validation (the threshold is fitted there)."""

    cut = int(width * TRAIN_FRACTION)
    val = cut - cut // 6
    spec = {
        "data": {
            "scenes": [
                {
                    "optical": str(scene.optical),
                    "sar": str(scene.sar),
                    "label": str(scene.label),
                    "train": [{"window": f"0:{height},0:{val}"}],
                    "val": [{"window": f"0:{height},{val}:{cut}"}],
                }
            ],
            "tile": 128,
            "batch_size": 8,
            "val_tile": 256,
        }
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _scores(mask: str, label: str, window: tuple[int, int, int, int]) -> dict:
    # deferred: pipeline.training pulls torch (+2.7 s): python -m flows.demo --help must not
    from pipeline.training.evaluate import evaluate_files

    return evaluate_files(mask, label, window)


def _line(name: str, s: dict) -> str:
    return (
        f"{name}: change F1 {s['f1']:.3f}, IoU {s['iou']:.3f}, "
        f"precision {s['precision']:.3f}, recall {s['recall']:.3f}"
    )


def run_demo(
    out: Path = typer.Option(Path("demo-out"), help="Output directory."),
    data: Path = typer.Option(OMBRIA, help="OMBRIA folder as published."),
    chips: int = typer.Option(70, help="Test chips laid out (70 = the whole test split)."),
    steps: int = typer.Option(60, help="Fine-tuning steps through retrain."),
) -> int:
    """m2cd end-to-end demo (shipped model, fine-tune, detect); exit 1 when it maps no flood."""
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    _embedded_prefect(out)
    t0 = time.monotonic()

    # deferred: pipeline.training pulls torch (+2.7 s): flows.demo --help must not
    from pipeline.training.config import ChipSource, load_train_config
    from pipeline.training.data import chip_triples
    from pipeline.training.mosaic import write_mosaic

    if not data.is_dir():
        raise InputError(str(data), "OMBRIA not found: pass --data (the folder as published)")
    triples = chip_triples(ChipSource(root=str(data)), "test")[:chips]
    scene = write_mosaic(
        triples, out / "scenes" / "ombria_test", load_train_config("ombria").detect.sar
    )
    height, width = scene.shape
    cut = int(width * TRAIN_FRACTION)
    held_out = (0, height, cut, width)
    print(
        f"[demo] {scene.chips} OMBRIA test chips as one {height}×{width} scene under "
        f"{out / 'scenes'}",
        flush=True,
    )

    # deferred: the flows pull prefect (+2.0 s) and torch: flows.demo --help must not
    from flows.detect_scene import detect_scene
    from flows.retrain import retrain

    registry = out / "registry"

    def detect(name: str, model: str = "promoted"):
        """detect-scene on the mosaic (`promoted`: what the service would run now)."""
        return detect_scene(
            optical=str(scene.optical),
            sar=str(scene.sar),
            output=str(out / name),
            model=model,
            registry=str(registry),
            overrides=CHIP_TILES,
            overwrite=True,
        )

    print("[demo] detect-scene with model=promoted (none yet: the shipped model) ...", flush=True)
    shipped = detect("shipped")
    mask = shipped.products["change_mask.tif"]
    whole = _scores(mask, str(scene.label), (0, height, 0, width))
    before = _scores(mask, str(scene.label), held_out)
    print(f"[demo] {_line('shipped model, whole mosaic', whole)}", flush=True)

    (out / "train").mkdir(exist_ok=True)
    print(
        f"[demo] retrain: fine-tune on the left {TRAIN_FRACTION:.0%} ({steps} steps) ...",
        flush=True,
    )
    trained = retrain(
        recipe="finetune",
        data=str(_data_spec(scene, width, height, out / "labels.yaml")),
        overrides={
            "stages": [{"name": "main", "model": "m2cd_mit_b0", "steps": steps, "init": "shipped"}],
            "progress": False,
        },
        registry=str(registry),
        work_dir=tempfile.mkdtemp(dir=out / "train", prefix="run-"),
    )
    verdict = (
        "promoted"
        if trained.promoted
        else f"not promoted: the {trained.incumbent_source} model stays in service"
    )
    print(
        f"[demo] retrain: model {trained.digest[:19]} validation F1 "
        f"{trained.metrics.get('f1', 0):.3f} against the {trained.incumbent_source} model's "
        f"{(trained.incumbent_metrics or {}).get('f1', 0):.3f} ({verdict})",
        flush=True,
    )
    tuned = detect("finetuned", model=trained.digest)  # the candidate, promoted or not
    after = _scores(tuned.products["change_mask.tif"], str(scene.label), held_out)

    print(f"\n[demo] products in {shipped.out} and {tuned.out}:")
    for name, uri in shipped.products.items():
        print(f"  {name:22s} {uri}")
    print(f"[demo] quick-look: {shipped.products.get('quicklook.png')}")
    print(f"[demo] on the right {1 - TRAIN_FRACTION:.0%} of the mosaic (not fine-tuned on):")
    print(f"  {_line('shipped model   ', before)}")
    print(f"  {_line('after fine-tune ', after)}  (gain {after['f1'] - before['f1']:+.3f})")
    print(f"[demo] total {time.monotonic() - t0:.0f} s")
    if whole["f1"] <= 0.5:
        print(
            f"[demo] FAILED: the shipped model maps floods at F1 {whole['f1']:.3f}", file=sys.stderr
        )
        return 1
    print(f"[demo] OK: shipped model F1 {whole['f1']:.3f} on real floods it was not trained on")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m flows.demo [--out DIR] [--chips N] [--steps N]` (what `make demo` runs)."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(run_demo)
    try:
        return int(app(args=argv, standalone_mode=False) or 0)
    except SystemExit as exc:
        return int(exc.code or 0)


if __name__ == "__main__":  # the guard matters: Dask workers are spawned processes
    sys.exit(main())
