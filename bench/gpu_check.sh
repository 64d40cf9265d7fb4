#!/usr/bin/env bash
# GPU check for a lent accelerator machine (Python 3.12, torch/timm/xarray preinstalled, no network).
#
# Installs nothing from the network: Python wheels the machine lacks travel in ./.whl (see
# BENCHMARKS.md, "GPU check", for the one `pip download` line that fills it here). Runs the model tests
# on CUDA, the model benchmark (bf16 autocast + channels_last), and, when the scene stack is importable,
# the end-to-end pipeline benchmark, then prints one short table. Budget: a few minutes.
#   usage (device tool): bash bench/gpu_check.sh            (with carry: [".whl"])
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}; mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, 'cuda', torch.cuda.is_available())"

echo "== model tests on torch $(python3 -c 'import torch; print(torch.__version__)')"
timeout 150 python3 -m pytest tests/m2cd -q -x --noconftest -p no:cacheprovider -k "not cli" 2>&1 | tail -3 | tee "$OUT/tests.txt"

echo "== model benchmark (bf16 autocast + channels_last on CUDA)"
python3 - <<'PY' 2>&1 | tee "$OUT/bench_model.jsonl"
import json
from pipeline.bench.model import run
for name, batch in [("m2cd_mit_b1", 8), ("m2cd_mit_b1", 64), ("m2cd_mit_b0", 64), ("m2cd_r18", 64)]:
    print(json.dumps(run(name, batch=batch, size=256, repeats=10, warmup=3, device="cuda")), flush=True)
PY

if python3 -c "import rasterio, zarr, rioxarray, dask, shapely, pystac, rio_cogeo" 2>/dev/null; then
  echo "== pipeline benchmark on CUDA (pipeline CLI only: Prefect is not needed, nor installed there)"
  timeout 240 python3 -c "from pipeline.cli import register; register()(['bench', 'pipeline', '--device', 'cuda', '--size', '4096', '--repeats', '3', '--json'])" 2>&1 | tail -1 | tee "$OUT/bench_pipeline.json"
else
  echo "== pipeline benchmark skipped: the scene stack (rasterio, zarr, ...) is not importable here"
fi

python3 - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
print(f"\n{'model':<14}{'batch':>6}{'fp32 pairs/s':>14}{'bf16 pairs/s':>14}")
for line in (out / "bench_model.jsonl").read_text().splitlines():
    try:
        r = json.loads(line)
    except ValueError:
        continue
    fp32, bf16 = r.get("fp32", {}), r.get("bf16", {})
    print(f"{r.get('model', '?'):<14}{r.get('batch', 0):>6}{fp32.get('pairs_per_s', 0):>14.1f}{bf16.get('pairs_per_s', 0):>14.1f}")
p = out / "bench_pipeline.json"
if p.exists() and p.read_text().strip().startswith("{"):
    r = json.loads(p.read_text())
    print("pipeline efficiency", r.get("efficiency"), "tiles/s", r.get("detect_tiles_per_s"))
PY
