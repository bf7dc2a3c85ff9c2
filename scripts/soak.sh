#!/usr/bin/env bash
# Soak: `bentoml serve` on MODEL under single-image /classify requests at concurrency 32 for
# SECONDS (serving/bench.py), with the resident memory of the whole service (server and workers)
# before and after, and the error count. Pass: zero errors, memory flat.
# usage: bash scripts/soak.sh [MODEL=models/model.onnx] [SECONDS=500] [IMAGES=synthetic]
set -euo pipefail
model=${1:-models/model.onnx} seconds=${2:-500} images=${3:-}
py=${PY:-.venv/bin/python} port=${PORT:-3017}
TIN_MODEL=$model "$py" -m bentoml serve --port "$port" > /tmp/soak-serve.log 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 120); do curl -sf "localhost:$port/readyz" > /dev/null && break; sleep 1; done
rss() {  # MiB over the server and all its descendants
  local pids=$server all=$server
  while [ -n "$pids" ]; do
    pids=$(pgrep -d , -P "$pids" || true)
    [ -n "$pids" ] && all="$all,$pids"
  done
  ps -o rss= -p "$all" | awk '{s += $1} END {printf "%.0f", s / 1024}'
}
before=$(rss)
"$py" -m serving.bench --url "http://localhost:$port" ${images:+--images "$images"} -c 32 \
  -d "$seconds" --warmup 5 --json | tee /tmp/soak.json
after=$(rss)
echo "resident memory of the service: ${before} MiB before, ${after} MiB after ${seconds} s"
