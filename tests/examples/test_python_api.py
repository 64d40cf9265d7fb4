"""The Python API as a notebook uses it: examples/python_api.py runs, and `import pipeline` is light."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    return os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}


def test_import_pipeline_does_not_import_torch():
    code = (
        "import sys, pipeline; from pipeline import detect, predict; print('torch' in sys.modules)"
    )
    lazy = "import sys, pipeline; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", lazy], env=_env(), capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr
    out = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr  # the names resolve on first use


@pytest.mark.slow
def test_python_api_example_runs_detect_and_predict_with_the_shipped_model(tmp_path):
    done = subprocess.run(
        [sys.executable, str(REPO / "examples" / "python_api.py"), str(tmp_path)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert "predict equals detect's change_prob.tif: True" in done.stdout
    assert (tmp_path / "out" / "item.json").is_file()
    assert "CRS EPSG:32633" in done.stdout  # predict keeps the optical CRS
