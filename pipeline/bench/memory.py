"""`m2cd bench memory`: peak RSS of a large scene ÷ that of a small one, same settings.

Each detect runs in a fresh subprocess that reports its own peak RSS (`ru_maxrss`), so neither
the parent, the synthetic-input writer nor the other run's allocations count. A ratio near 1
means memory is bounded by the block, not by the scene. Beside it: what a full-scene accumulator
(float32 Σw·p + Σw + probability, as the anchors keep) would need at the large size.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pipeline.bench.machine import machine_info
from pipeline.config import load_detect_config
from pipeline.engine.local import detect
from pipeline.engine.request import DetectRequest
from pipeline.synth import synth_pair

ACCUMULATOR_BYTES_PER_PX = 4 + 4 + 4  # float32 Σw·p, Σw, probability


def _child(args: dict[str, Any]) -> dict[str, Any]:
    """Runs in the subprocess: one detect, then this process's peak RSS."""

    cfg = load_detect_config("default", args["overrides"])
    start = time.perf_counter()
    summary = detect(
        DetectRequest(
            optical=args["optical"],
            sar=args["sar"],
            out=args["out"],
            model=args["model"],
            config=cfg,
        ),
        progress=False,
    )
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {
        "peak_rss_mib": round(peak_kib / 1024, 1),
        "seconds": round(time.perf_counter() - start, 2),
        "tiles": summary.tiles,
        "blocks": summary.blocks,
    }


SEED = 11


def _inputs(size: int, root: Path, cache_dir: str | None) -> tuple[Path, Path]:
    """The synthetic pair of side `size`: reused from `cache_dir` when complete there.

    Why a cache: a 16384² pair takes about a minute and 1.9 GB to write, and the figure does
    not depend on it being fresh. `synth.json` is written last, so its presence marks a pair
    that was written completely (a killed run leaves none and is re-synthesised).
    """

    scene = (Path(cache_dir) if cache_dir else root) / f"synth-{size}-seed{SEED}"
    if not (scene / "synth.json").is_file():
        synth_pair(scene, size=(size, size), seed=SEED, overwrite=True)
    return scene / "optical.tif", scene / "sar.tif"


def _measure(
    size: int, root: Path, model: str, overrides: dict[str, Any], cache_dir: str | None
) -> dict[str, Any]:
    optical, sar = _inputs(size, root, cache_dir)
    args = {
        "optical": str(optical),
        "sar": str(sar),
        "out": str(root / f"out{size}"),
        "model": model,
        "overrides": overrides,
    }
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.bench.memory", json.dumps(args)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"bench memory: detect of {size}² failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(
    small: int = 4096,
    large: int = 16384,
    model: str = "tiny",
    tile: int = 256,
    overlap: int = 64,
    block: int = 2048,
    batch_size: int = 8,
    device: str = "cpu",
    workdir: str | None = None,
    cache_dir: str | None = None,
) -> dict[str, Any]:
    """Detect the same synthetic scene at two sizes, each in a fresh process, and report both peak
    RSS values and their ratio."""
    overrides = {
        "tiling.tile": tile,
        "tiling.overlap": overlap,
        "tiling.block": block,
        "inference.batch_size": batch_size,
        "inference.device": device,
    }

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="m2cd-bench-mem-", dir=workdir) as tmp:
        root = Path(tmp)
        lo = _measure(small, root, model, overrides, cache_dir)
        hi = _measure(large, root, model, overrides, cache_dir)
    accumulator = large * large * ACCUMULATOR_BYTES_PER_PX
    block_accumulator = block * block * ACCUMULATOR_BYTES_PER_PX
    return {
        "benchmark": "memory",
        "model": model,
        "device": device,
        "tile": tile,
        "overlap": overlap,
        "block": block,
        "batch_size": batch_size,
        "small": {"size": [small, small], **lo},
        "large": {"size": [large, large], **hi},
        "rss_ratio": round(hi["peak_rss_mib"] / lo["peak_rss_mib"], 4),
        "goal": 1.1,
        "full_scene_accumulator_gib": round(accumulator / 2**30, 6),
        "block_accumulator_mib": round(block_accumulator / 2**20, 3),
        "loadavg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "machine": machine_info(),
    }


def format_table(r: dict[str, Any]) -> str:
    """The figures as BENCHMARKS.md quotes them."""
    s, lg = r["small"], r["large"]
    return (
        f"memory bench: {r['model']} on {r['device']}, tile {r['tile']}, overlap {r['overlap']}, "
        f"block {r['block']}, batch {r['batch_size']}\n"
        f"  {s['size'][0]}²: peak RSS {s['peak_rss_mib']:.0f} MiB ({s['tiles']} tiles, "
        f"{s['seconds']:.0f} s)\n"
        f"  {lg['size'][0]}²: peak RSS {lg['peak_rss_mib']:.0f} MiB ({lg['tiles']} tiles, "
        f"{lg['seconds']:.0f} s)\n"
        f"  rss_ratio {r['rss_ratio']:.3f} (goal ≤ {r['goal']}); a full-scene float32 accumulator "
        f"at {lg['size'][0]}² would need {r['full_scene_accumulator_gib']:.2f} GiB"
    )


if __name__ == "__main__":
    import warnings

    warnings.simplefilter("ignore")
    print(json.dumps(_child(json.loads(sys.argv[1]))))
