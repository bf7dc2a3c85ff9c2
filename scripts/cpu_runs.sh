#!/usr/bin/env bash
# The seeds' experiments that a CPU can run (README, "Results beside the papers"): each preset in
# turn, niced, outside the work tree, resumed exactly from its last checkpoint when a session's end
# (or anything else) interrupted it, then evaluated once on the local val half from its LAST
# checkpoint (none is picked by its val score). A finished run is skipped, so the same command
# carries the queue on in the next session.
#   ZIP=path/to/tiny-imagenet-200.zip bash scripts/cpu_runs.sh [PRESET ...]   (detached: setsid
#   nohup ... &). Runs land in $ROOT/NAME (default ~/tin-runs); $ROOT/log.tsv records each start
#   and end with the machine, for docs/LOG.md.
set -euo pipefail
cd "$(dirname "$0")/.."
zip=${ZIP:?ZIP names tiny-imagenet-200.zip}
root=${ROOT:-$HOME/tin-runs}
py=${PY:-$PWD/.venv/bin/python}
presets=("$@")
[ ${#presets[@]} -gt 0 ] || presets=(ebrahimi-resnet7 ebrahimi-convnet7 ebrahimi-resnet9
  ebrahimi-convnet9 sun-vanilla-resnet34 sun-improved-resnet34)
mkdir -p "$root"
# The code of the commit this started from, so that editing the work tree meanwhile changes no run.
code=$root/code-$(git rev-parse --short HEAD)
[ -d "$code" ] || { mkdir -p "$code.tmp" && git archive HEAD | tar -x -C "$code.tmp" && mv "$code.tmp" "$code"; }
machine="$(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
for name in "${presets[@]}"; do
  run=$root/$name
  [ -f "$run/eval/evaluation.json" ] && { echo "$name: done"; continue; }
  resume=(); [ -f "$run/last.pt" ] && resume=(--resume)
  printf '%s\tstart\t%s\t%s\t%s\n' "$(date -Is)" "$name" "$(git rev-parse --short HEAD)" "$machine" >> "$root/log.tsv"
  (cd "$code" && nice -n 19 "$py" -m training.train --preset "$name" --data "$zip" --out "$run" \
    "${resume[@]}") >> "$run.log" 2>&1 || { echo "$name: training failed, see $run.log" >&2; exit 1; }
  # A stop signal checkpoints and exits 0 with {"interrupted": true}: leave it for the next time.
  tail -n 1 "$run.log" | grep -q '"interrupted"' && { echo "$name: interrupted" >&2; exit 0; }
  (cd "$code" && nice -n 19 "$py" -m training.evaluate --checkpoint "$run/last.pt" --data "$zip" \
    --out "$run/eval") >> "$run.log" 2>&1
  printf '%s\tend\t%s\n' "$(date -Is)" "$name" >> "$root/log.tsv"
done
