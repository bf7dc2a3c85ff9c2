#!/usr/bin/env bash
# On the GPU machine: wait for PRESET's run to end (pid from start.sh), then put under $OUT what
# comes back (at most 8 files of 16 MiB): the slim fp16 checkpoint of the run's LAST weights (the
# EMA; no checkpoint is picked by its val score, which would inflate the score reported on that
# val) cut into 15 MiB pieces, its SHA-256, metrics.jsonl, curves.png, then its one evaluation
# (evaluation.json, errors.png). Here, join the pieces with `cat model.pt.part* > models/model.pt`,
# check the hash, and `python -m export --checkpoint models/model.pt ...`.
# usage: bash scripts/gpu/collect.sh [PRESET=final]
set -euo pipefail
preset=${1:-final}
data=${DATA:-/root/data/tiny-imagenet-200.zip}
run=${RUNS:-/root/run}/$preset
out=${OUT:?OUT is where the device tool collects files}
export PYTHONPATH=/tmp/site:$PWD
pidfile=${RUNS:-/root/run}/$preset.pid
if [[ -f $pidfile ]]; then
  # Bounded by the device call's own timeout: put this in the call right after the last poll, so
  # no second is spent between the run's end and the evaluation.
  while kill -0 "$(cat "$pidfile")" 2>/dev/null; do sleep 2; done
fi
# Bring back the weights and curves first: if the lease runs out during the evaluation, the run
# is not lost (the evaluation can be redone here on CPU with training.evaluate).
python3 -m training.checkpoint slim "$run/last.pt" "$run/model.pt" --half
split -b 15M -d -a 1 "$run/model.pt" "$out/model.pt.part"
(cd "$run" && sha256sum model.pt > "$out/model.pt.sha256")
cp "$run/metrics.jsonl" "$run/curves.png" "$out/"
python3 -m training.evaluate --checkpoint "$run/model.pt" --data "$data" --out "$run/eval"
cp "$run/eval/evaluation.json" "$run/eval/errors.png" "$out/"
ls -la "$out"
