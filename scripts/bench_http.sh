#!/usr/bin/env bash
# The HTTP half of `make bench`: `python -m bench.http` starts `bentoml serve` on MODEL three
# times, for 20 s per level (3 s warm-up; ~6 min in all): (1) ONNX Runtime fp32 forced
# (TIN_BACKEND=onnxruntime TIN_PRECISION=fp32), single-image /classify at concurrency 1, 8, 32;
# (2) the `auto` backend, /classify and /explain taking turns at 1, 8, 32 (the maps' cost beside
# classification, and auto beside fp32, in one run); (3) auto, /classify_batch of 16 images at 1
# and 8. Each level also gives the raw backend's img/s at the same model batch for the ratio.
# The tables are appended to OUT under a heading with the date and the commands. Images: the JPEGs under
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
  what="the JPEGs under \`$images\` (bench.http uses the first 256)"
else
  echo "TINY_IMAGENET_VAL_IMAGES is unset: 64 synthetic fixture JPEGs (training/fixtures.py)"
  "$py" -m training.fixtures "$tmp" --classes 8 --train 1 --val 8 > /dev/null
  images=$tmp/tiny-imagenet-200/val/images
  what="64 synthetic JPEGs: \`python -m training.fixtures DIR --classes 8 --train 1 --val 8\`"
fi
fp32=(--serve "$model" --images "$images" -c 1 8 32 -d 20)
auto=(--serve "$model" --images "$images" -c 1 8 32 -d 20 --endpoint classify explain)
batch=(--serve "$model" --images "$images" -c 1 8 -d 20 --batch 16)
# pipefail: a failed run stops here
TIN_BACKEND=onnxruntime TIN_PRECISION=fp32 "$py" -m bench.http "${fp32[@]}" | tee "$tmp/http.txt"
"$py" -m bench.http "${auto[@]}" | tee -a "$tmp/http.txt"
"$py" -m bench.http "${batch[@]}" | tee -a "$tmp/http.txt"
{
  printf '\n## HTTP service, %s UTC\n\n' "$(date -u '+%Y-%m-%d %H:%M')"
  printf -- '- commands: `TIN_BACKEND=onnxruntime TIN_PRECISION=fp32 python -m bench.http %s`, ' "${fp32[*]}"
  printf -- 'then `python -m bench.http %s`, then `... %s`\n' "${auto[*]}" "${batch[*]}"
  printf -- '- images: %s\n' "$what"
  printf -- '- columns (bench/http.py): requests, errors, img/s, latency per request in ms,'
  printf ' requests merged per model call by adaptive batching, 1-min load average (server and'
  printf ' client included); then per level the mean model batch, the raw backend'"'"'s img/s at'
  printf ' it (same process, service idle) and HTTP img/s over raw\n\n```\n'
  cat "$tmp/http.txt"
  printf '```\n'
} >> "$out"
echo "# appended to $out"
