#!/usr/bin/env bash
# Second GPU batch (same recipe, same splits): the O2SP ablation rows, the Yellow River R18 rows,
# and a recipe variant without change-biased sampling / class weights.
# All processes append to their own file; everything is concatenated into $OUT/results.jsonl.
set -u
OUT=${OUT:-runs/real/gpu2}; STEPS=${STEPS:-600}; LIMIT=${LIMIT:-270}
mkdir -p "$OUT/parts"
export PYTHONPATH="$PWD/.device/site:$PWD${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
BIASED='--set data.min_change_fraction=0.5 --set loss.class_weights=auto'  # as real_gpu.sh
ft() { local out=$1; shift; timeout "$LIMIT" python -m eval.real_eval finetune --steps "$STEPS" \
  --workdir "$OUT/train" --out "$OUT/parts/$out.jsonl" "$@" > "$OUT/parts/$out.log" 2>&1; }
for v in siam_r18 m2cd_r18; do
  ft yr_$v --scenes yellow_river --variants $v --seeds 0 $BIASED &
done
for s in shuguang yellow_river lpem4 gloucester2; do
  ft o2sp_$s --scenes $s --variants m2cd_r18_o2sp --seeds 0 $BIASED &
  ft uni_$s --scenes $s --variants siam_mit_b0 --seeds 0 --tag _uniform &  # = default recipe
done
wait
cat "$OUT"/parts/*.jsonl > "$OUT/results.jsonl"
tail -n 3 "$OUT"/parts/*.log > "$OUT/logs_tail.txt"
