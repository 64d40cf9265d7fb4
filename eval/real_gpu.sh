#!/usr/bin/env bash
# Real-data fine-tuning table on a GPU machine (numpy + torch + timm only; GDAL not needed there):
# the normalised arrays come from `python -m eval.real_eval prepare` run beforehand.
# Usage: OUT=dir [STEPS=600] [SEEDS=0,1,2] eval/real_gpu.sh
# One process per scene (and per variant group) in parallel; each appends one JSON line per run.
# These runs used change-centred chips + class weights (the recipe's first version), hence the --set.
# The device returns at most 8 files: concatenate the *.jsonl before leaving (see real_gpu2.sh).
set -u
OUT=${OUT:-runs/real/gpu}
STEPS=${STEPS:-600}
SEEDS=${SEEDS:-0,1,2}
EXTRA_SEEDS=${EXTRA_SEEDS:-0}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/.device/site:$PWD${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=2 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader > "$OUT/device.txt" 2>/dev/null || true
pids=()
for scene in shuguang yellow_river lpem4 gloucester2; do
  python -m eval.real_eval finetune --scenes "$scene" --steps "$STEPS" --seeds "$SEEDS" \
    --variants siam_r18,m2cd_r18,m2cd_r18_o2sp --set data.min_change_fraction=0.5 --set loss.class_weights=auto \
    --out "$OUT/finetune_r18_$scene.jsonl" \
    --workdir "$OUT/train" > "$OUT/log_r18_$scene.txt" 2>&1 &
  pids+=($!)
  python -m eval.real_eval finetune --scenes "$scene" --steps "$STEPS" --seeds "$EXTRA_SEEDS" \
    --variants siam_mit_b0,m2cd_mit_b0,m2cd_mit_b0_o2sp --set data.min_change_fraction=0.5 --set loss.class_weights=auto \
    --out "$OUT/finetune_mit_$scene.jsonl" \
    --workdir "$OUT/train" > "$OUT/log_mit_$scene.txt" 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
find "$OUT/train" -name "*.safetensors" -delete  # keep metrics.jsonl, drop weights
