"""`make demo`: train → register → promote → detect → score, end to end on Prefect's embedded default.

1. synthesize a training scene and a different test scene (`pipeline.synth`, 1-band SAR);
2. fine-tune the tiny M²CD with the `demo` recipe through the **retrain** flow (which evaluates on the
   training scene's validation strip, registers the model and promotes it);
3. run the **detect-scene** flow on the test scene with `model=promoted` (temporary local Dask cluster);
4. score the change mask against the synthetic truth and print change-class F1 (must be >= 0.8).

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

MIN_F1 = 0.8


def _embedded_prefect(out: Path) -> None:
    """Force the embedded default in this process (before prefect is imported)."""
    os.environ.pop("PREFECT_API_URL", None)
    os.environ["PREFECT_HOME"] = str(out / ".prefect")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")  # workers inherit it
    # first start creates the SQLite database: give a busy 2-core machine time (default 20 s)
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


def _data_spec(scene, size: int, path: Path) -> Path:
    """The training-data spec (what `m2cd labels push` publishes): train on 3/4, validate on 1/4."""
    import yaml

    split = size * 3 // 4
    spec = {
        "data": {
            "scenes": [
                {
                    "optical": str(scene.optical),
                    "sar": str(scene.sar),
                    "label": str(scene.label),
                    "train": [{"window": f"0:{split},0:{size}"}],
                    "val": [{"window": f"{split}:{size},0:{size}"}],
                }
            ],
            "tile": 128,
            "batch_size": 8,
            "min_change_fraction": 0.3,
            "val_tile": 128,
        }
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run_demo(
    out: Path = typer.Option(Path("demo-out"), help="Output directory."),
    size: int = typer.Option(512, help="Scene size in pixels (square)."),
    steps: int | None = typer.Option(None, help="Training steps (recipe: 300)."),
) -> int:
    """m2cd end-to-end demo (train, promote, detect); exit 1 when the test F1 is too low."""
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    _embedded_prefect(out)
    t0 = time.monotonic()

    from pipeline.synth import synth_pair

    shape = (size, size)
    train_scene = synth_pair(
        out / "scenes" / "train", size=shape, seed=11, sar_bands=1, overwrite=True
    )
    test_scene = synth_pair(
        out / "scenes" / "test", size=shape, seed=12, sar_bands=1, overwrite=True
    )
    print(f"[demo] synthesized training and test scenes under {out / 'scenes'}", flush=True)

    from flows.detect_scene import detect_scene
    from flows.retrain import retrain

    registry = out / "registry"
    (out / "train").mkdir(exist_ok=True)
    overrides = {"stages": [{"name": "main", "model": "tiny", "steps": steps}]} if steps else None
    trained = retrain(
        recipe="demo",
        data=str(_data_spec(train_scene, size, out / "labels.yaml")),
        overrides=overrides,
        registry=str(registry),
        work_dir=tempfile.mkdtemp(dir=out / "train", prefix="run-"),
    )
    print(
        f"[demo] retrain: model {trained.digest[:19]} validation F1 {trained.metrics.get('f1', 0):.3f}"
        f" ({'promoted' if trained.promoted else 'kept the promoted model'})",
        flush=True,
    )

    print("[demo] detect-scene on the test scene with model=promoted ...", flush=True)
    manifest = detect_scene(
        optical=str(test_scene.optical),
        sar=str(test_scene.sar),
        output=str(out / "products"),
        model="promoted",
        registry=str(registry),
        overrides={"tiling.block": max(256, size // 2)},
        overwrite=True,
    )

    from pipeline.training import evaluate_files

    scores = evaluate_files(manifest.products["change_mask.tif"], str(test_scene.label))
    f1 = scores["f1"]
    print(f"\n[demo] products in {manifest.out}:")
    for name, uri in manifest.products.items():
        print(f"  {name:16s} {uri}")
    print(f"[demo] quick-look: {manifest.products.get('quicklook.png')}")
    print(
        f"[demo] test scene (unseen, seed 12): change F1 {f1:.3f}, IoU {scores['iou']:.3f}, "
        f"precision {scores['precision']:.3f}, recall {scores['recall']:.3f}; "
        f"changed area {manifest.changed_km2} km²"
    )
    print(f"[demo] total {time.monotonic() - t0:.0f} s")
    if f1 < MIN_F1:
        print(f"[demo] FAILED: change F1 {f1:.3f} < {MIN_F1}", file=sys.stderr)
        return 1
    print(f"[demo] OK: change F1 {f1:.3f} >= {MIN_F1}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m flows.demo [--out DIR] [--size N] [--steps N]` (what `make demo` runs)."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(run_demo)
    try:
        return int(app(args=argv, standalone_mode=False) or 0)
    except SystemExit as exc:
        return int(exc.code or 0)


if __name__ == "__main__":  # the guard matters: Dask workers are spawned processes
    sys.exit(main())
