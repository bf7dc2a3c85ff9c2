#!/usr/bin/env bash
# Soak: `bentoml serve` on MODEL under single-image /classify requests at concurrency 32 for
# SECONDS (bench/http.py), with the error count and the resident memory of the whole service
# (server and workers) sampled every $SAMPLE seconds (15) into $TMPDIR/soak-rss.tsv: start, end,
# max, and the least-squares slope over the second half. ONNX Runtime's arena and the allocator
# grow early and then stay; a leak keeps climbing in the second half too.
# Then the same for each process (server, model worker, HTTP worker): its second-half slope as a
# share of its mean, per 10 minutes, against the bar (2%, or $BAR), and FAIL past it.
# Pass (exit 0): zero errors, every process within the bar; else exit 1.
# usage: bash scripts/soak.sh [MODEL=models/model.onnx] [SECONDS=500] [IMAGES=synthetic]
set -euo pipefail
model=${1:-models/model.onnx} seconds=${2:-500} images=${3:-}
py=${PY:-.venv/bin/python} port=${PORT:-3017} sample=${SAMPLE:-15}
samples=${TMPDIR:-/tmp}/soak-rss.tsv
TIN_MODEL=$model "$py" -m bentoml serve --port "$port" > ${TMPDIR:-/tmp}/soak-serve.log 2>&1 &
server=$!
sampler=
trap 'kill $server $sampler 2>/dev/null || true' EXIT
for _ in $(seq 120); do curl -sf "localhost:$port/readyz" > /dev/null && break; sleep 1; done

pids() {  # the server and all its descendants, comma-separated
  local pids=$server all=$server
  while [ -n "$pids" ]; do
    pids=$(pgrep -d , -P "$pids" || true)
    [ -n "$pids" ] && all="$all,$pids"
  done
  echo "$all"
}
sample_rss() {  # seconds since start, total MiB, then name:MiB of each process
  ps -o rss=,args= -p "$(pids)" | awk -v t=$(($(date +%s) - t0)) '
    {name = "server"; for (i = 2; i < NF; i++) if ($i == "--service-name") name = $(i + 1)
     total += $1; each = each sprintf(" %s:%.1f", name, $1 / 1024)}
    END {printf "%d\t%.1f\t%s\n", t, total / 1024, each}'
}
t0=$(date +%s)
sample_rss > "$samples"
(while sleep "$sample"; do sample_rss >> "$samples"; done) &
sampler=$!

"$py" -m bench.http --url "http://localhost:$port" ${images:+--images "$images"} -c 32 \
  -d "$seconds" --warmup 5 --json | tee ${TMPDIR:-/tmp}/soak.json
kill $sampler
sample_rss >> "$samples"
# First pass: the last sample's time; second: start, end, max, and the slope from its half on.
awk -F '\t' 'NR == FNR {last = $1; next}
  FNR == 1 {start = $2}
  {end = $2; if ($2 > max) max = $2}
  $1 >= last / 2 {n++; sx += $1; sy += $2; sxx += $1 * $1; sxy += $1 * $2}
  END {
    slope = n > 1 ? (n * sxy - sx * sy) / (n * sxx - sx * sx) * 60 : 0
    printf "resident memory of the service (MiB, %d samples every %s s in %s):", FNR, s, f
    printf " start %.1f, end %.1f, max %.1f;", start, end, max
    printf " slope over the second half (%d samples): %+.2f MiB/min\n", n, slope
  }' s="$sample" f="$samples" "$samples" "$samples"
# Per process: fields 3.. are name:MiB. Second half only: warm-up (arenas, pools) is before it.
awk -F '\t' 'NR == FNR {last = $1; next}
  $1 >= last / 2 {
    np = split($3, parts, " ")
    for (i = 1; i <= np; i++) {
      split(parts[i], kv, ":"); p = kv[1]; m = kv[2]
      if (!(p in n)) {names[++k] = p; first[p] = m}
      n[p]++; sx[p] += $1; sy[p] += m; sxx[p] += $1 * $1; sxy[p] += $1 * m; lastm[p] = m
      if (!(p in max) || m > max[p]) max[p] = m
      if (!(p in min) || m < min[p]) min[p] = m
    }
  }
  END {
    for (j = 1; j <= k; j++) {
      p = names[j]; mean = sy[p] / n[p]
      d = n[p] * sxx[p] - sx[p] * sx[p]
      slope = d > 0 ? (n[p] * sxy[p] - sx[p] * sy[p]) / d * 60 : 0
      pct = 1000 * slope / mean
      printf "  %-18s second half: %.1f -> %.1f MiB (min %.1f, max %.1f), %+.3f MiB/min = %+.2f%% per 10 min %s\n",
        p, first[p], lastm[p], min[p], max[p], slope, pct, (pct > bar ? "FAIL (bar " bar "%)" : "ok")
      if (pct > bar) failed = 1
    }
    exit failed
  }' bar="${BAR:-2}" "$samples" "$samples" || { echo "soak: FAIL (memory)"; exit 1; }
grep -q '"errors": 0,' "${TMPDIR:-/tmp}/soak.json" || { echo "soak: FAIL (errors)"; exit 1; }
echo "soak: pass"
