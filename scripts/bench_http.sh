#!/usr/bin/env bash
# The HTTP half of `make bench`: `python -m serving.bench` starts `bentoml serve` on MODEL, runs
# concurrency 1, 8 and 32 for 20 s each (3 s warm-up; ~1.5 min in all), and its table is appended
# to OUT under a heading with the date and the command. Images: the JPEGs under
# $TINY_IMAGENET_VAL_IMAGES (e.g. tiny-imagenet-200/val/images), or else 64 synthetic ones written
# by training/fixtures.py (64×64 JPEGs like the real ones, but stripes: decode cost is similar,
# the predictions are meaningless).
# usage: bash scripts/bench_http.sh PYTHON MODEL OUT
set -euo pipefail
py=${1:?python} model=${2:?model} out=${3:?output markdown file}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
images=${TINY_IMAGENET_VAL_IMAGES:-}
if [ -n "$images" ]; then
  what="the JPEGs under \`$images\` (serving.bench uses the first 256)"
else
  echo "TINY_IMAGENET_VAL_IMAGES is unset: 64 synthetic fixture JPEGs (training/fixtures.py)"
  "$py" -m training.fixtures "$tmp" --classes 8 --train 1 --val 8 > /dev/null
  images=$tmp/tiny-imagenet-200/val/images
  what="64 synthetic JPEGs: \`python -m training.fixtures DIR --classes 8 --train 1 --val 8\`"
fi
args=(--serve "$model" --images "$images" -c 1 8 32 -d 20)
"$py" -m serving.bench "${args[@]}" | tee "$tmp/http.txt"  # pipefail: a failed run stops here
{
  printf '\n## HTTP service, %s UTC\n\n' "$(date -u '+%Y-%m-%d %H:%M')"
  printf -- '- command: `python -m serving.bench %s`\n' "${args[*]}"
  printf -- '- images: %s\n' "$what"
  printf -- '- columns (serving/bench.py): requests, errors, img/s, latency per request in ms,'
  printf ' requests merged per model call by adaptive batching, 1-min load average (server and'
  printf ' client included)\n\n```\n'
  cat "$tmp/http.txt"
  printf '```\n'
} >> "$out"
echo "# appended to $out"
