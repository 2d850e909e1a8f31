#!/usr/bin/env bash
# Variant sweep on one GPU: every YAML in CONFIG_DIR trained as `p2m-geo train --preset cpu-quick
# --config FILE --device cuda`, PARALLEL at a time sharing the card, then `p2m-geo eval` on the
# validation list; runs still going at the deadline are stopped (their metrics.csv keeps the epochs
# they finished). README round 15 ran it on an H200 with PARALLEL = 8 (16 CPU cores): 10 epochs of
# the default set took ~260 s per run.
#
# usage: bash benchmarks/gpu_sweep.sh PACKED.npz CONFIG_DIR OUT_DIR SECONDS [PARALLEL]
#   PACKED.npz from `python benchmarks/pack_dataset.py pack ~/.cache/p2m-geo/data/synth-v1-pc24-views4-seed0 set.npz`
set -uo pipefail
packed=$1; configs=$2; out=$3; seconds=$4; parallel=${5:-8}
deadline=$(( $(date +%s) + seconds ))
data=$out/data
mkdir -p "$out/runs" "$out/evals" "$out/logs"
[ -f "$data/test_list.txt" ] || python3 "$(dirname "$0")/pack_dataset.py" unpack "$packed" "$data" || exit 1

one() {
  local file=$1 name left start
  name=$(basename "$file" .yaml); left=$(( deadline - $(date +%s) ))
  if [ $left -lt 30 ]; then echo "$name not started" >> "$out/times.txt"; return; fi
  start=$(date +%s)
  OMP_NUM_THREADS=1 timeout $left p2m-geo train --preset cpu-quick --config "$file" --data "$data" \
    --out "$out/runs" --name "$name" --device cuda --quiet > "$out/logs/$name.train.txt" 2>&1
  echo "$name train rc $? $(( $(date +%s) - start )) s" >> "$out/times.txt"
  left=$(( deadline - $(date +%s) ))
  if [ -f "$out/runs/$name/best.pt" ] && [ $left -gt 10 ]; then
    OMP_NUM_THREADS=1 timeout $left p2m-geo eval --checkpoint "$out/runs/$name/best.pt" --data "$data" \
      --device cuda --workers 0 --json "$out/evals/$name.json" > "$out/logs/$name.eval.txt" 2>&1
  fi
}
export -f one; export deadline data out
ls "$configs"/*.yaml | xargs -P "$parallel" -I{} bash -c 'one {}'
