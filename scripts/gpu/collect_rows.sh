#!/usr/bin/env bash
# On the GPU machine, for runs started together by start.sh (the papers' rows): wait for each to
# end, evaluate its last checkpoint (none picked by its val score), and bring back the small
# files of all of them in one
# $OUT/rows.tar.gz (the device tool returns at most 8 files): config.json, metrics.jsonl,
# curves.png, evaluation.json per run; no weights. Here: `tar xzf rows.tar.gz -C runs/` then
# `python scripts/gpu/rows.py runs/NAME ...` prints the README's results rows.
# usage: bash scripts/gpu/collect_rows.sh PRESET[,PRESET...]
set -euo pipefail
data=${DATA:-/root/data/tiny-imagenet-200.zip}
runs=${RUNS:-/root/run}
out=${OUT:?OUT is where the device tool collects files}
export PYTHONPATH=/tmp/site:$PWD
IFS=, read -ra names <<< "${1:?presets, comma-separated}"
files=()
for name in "${names[@]}"; do
  pid=$(cat "$runs/$name.pid")
  while kill -0 "$pid" 2>/dev/null; do sleep 2; done
  for f in config.json metrics.jsonl curves.png; do
    [[ -f $runs/$name/$f ]] && files+=("$name/$f")
  done
  # Pack what is there after each run, so a lease that ends mid-way still returns the rows so far.
  tar czf "$out/rows.tar.gz" -C "$runs" "${files[@]}"
done
for name in "${names[@]}"; do
  python3 -m training.evaluate --checkpoint "$runs/$name/last.pt" --data "$data" \
    --out "$runs/$name" > /dev/null
  files+=("$name/evaluation.json")
  tar czf "$out/rows.tar.gz" -C "$runs" "${files[@]}"
done
tar tzf "$out/rows.tar.gz"
