"""`make demo`'s path, end to end on a few OMBRIA chips: shipped model → retrain → detect again.

A reduced run (6 test chips, 2 fine-tuning steps) through the real entry point: Prefect's embedded
default, the detect-scene and retrain flows, real OMBRIA data read in place. The full demo (70 chips,
60 steps) takes 5-8 min on 2 cores, too long for the suite; this takes about a minute.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from flows.demo import OMBRIA

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not OMBRIA.is_dir(), reason=f"OMBRIA not found at {OMBRIA}")
def test_demo_maps_floods_with_the_shipped_model_then_fine_tunes_it(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PYTHONPATH"] = str(REPO)
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "flows.demo", "--out", str(out), "--chips", "6", "--steps", "2"]
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = done.stdout
    assert "6 OMBRIA test chips as one" in text
    whole = float(re.search(r"shipped model, whole mosaic: change F1 ([0-9.]+)", text).group(1))
    assert whole > 0.5  # the shipped model maps real floods it never saw
    verdict = re.search(
        r"retrain: model sha256:\S+ validation F1 [0-9.]+ against the shipped", text
    )
    assert verdict, text[-2000:]
    assert re.search(r"after fine-tune : change F1 [0-9.]+.*\(gain [+-][0-9.]+\)", text)
    for name in ("change_mask.tif", "change_prob.tif", "quicklook.png", "item.json"):
        assert (out / "shipped" / name).is_file() and (out / "finetuned" / name).is_file()
    assert "%|" not in done.stderr  # no progress bar from the fine-tune
