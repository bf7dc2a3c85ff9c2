#!/usr/bin/env bash
# The GPU machine's side of one lease; scripts/gpu/lease.py prints the calls that run it, in
# order, with what each carries. Every path is under $LEASE_ROOT (the machine's /root), so the
# rehearsal runs the same script against a local folder.
#   start PRESET FINISH_IN_S   wheels, data part 0, then the trainer detached: it compiles and
#                              measures on synthetic batches (speed.json) until the data is
#                              there, and its schedule ends FINISH_IN_S seconds from now
#   data K [SHA256]            append part K; with the zip's SHA-256 (the last part): unpack,
#                              check, and move it where the trainer waits for it
#   poll SECONDS PRESET        wait that long or until the run ends; the log's tail
#   collect PRESET             wait for the run; under $OUT its slim fp16 checkpoint in 15 MiB
#                              pieces, their hash, and run.tar.gz (metrics, curves, speed, val)
set -euo pipefail
root=${LEASE_ROOT:-/root}
data=$root/data runs=$root/run py=${PYTHON:-python3}
zip=$data/tiny-imagenet-200.zip
export PYTHONPATH=$root/site:$PWD
cmd=${1:?usage: lease.sh start|data|poll|collect ...}; shift
case $cmd in
  start)
    preset=${1:?preset} finish_in=${2:?seconds}
    mkdir -p "$data" "$runs"
    if compgen -G ".whl/*.whl" > /dev/null; then  # kornia: the machine's image lacks it
      "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$root/site" .whl/*.whl
    fi
    cat .device-data/p0/* > "$data/tin.zip.gz"
    finish_by=$(( $(date +%s) + finish_in ))
    setsid nohup "$py" -m training.train --preset "$preset" --data "$zip" --out "$runs/$preset" \
      --wait-for-data 10 --finish-by "$finish_by" > "$runs/$preset.log" 2>&1 < /dev/null &
    echo $! > "$runs/$preset.pid"  # collect waits on this pid (pgrep -f would match itself)
    sleep "${WAIT:-5}"; tail -c 400 "$runs/$preset.log"; echo ;;
  data)
    k=${1:?part number}
    cat ".device-data/p$k"/* >> "$data/tin.zip.gz"
    if [ -n "${2:-}" ]; then
      gunzip -c "$data/tin.zip.gz" > "$zip.tmp"
      echo "${2}  $zip.tmp" | sha256sum -c - || { rm -f "$zip.tmp"; exit 1; }
      mv "$zip.tmp" "$zip"  # whole, or not at all: the trainer waits for this name
    fi
    ls -la "$data" ;;
  poll)
    seconds=${1:?seconds} preset=${2:?preset}
    pid=$(cat "$runs/$preset.pid")
    for _ in $(seq "$seconds"); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    tail -c 600 "$runs/$preset.log"; echo ;;
  collect)
    preset=${1:?preset}; out=${OUT:?OUT is where the device tool collects files}
    run=$runs/$preset pid=$(cat "$runs/$preset.pid")
    while kill -0 "$pid" 2>/dev/null; do sleep 1; done
    [ -f "$run/last.pt" ] || { tail -c 2000 "$runs/$preset.log"; exit 1; }
    # The LAST weights (the EMA), none picked by a val score; fp16: 43 MB, three pieces.
    "$py" -m training.checkpoint slim "$run/last.pt" "$run/model.pt" --half
    split -b 15M -d -a 1 "$run/model.pt" "$out/model.pt.part"
    (cd "$run" && sha256sum model.pt > "$out/model.pt.sha256")
    cp "$runs/$preset.log" "$run/train.log"
    files=(); for f in config.json metrics.jsonl curves.png speed.json val.json train.log; do
      [ -f "$run/$f" ] && files+=("$f"); done
    tar czf "$out/run.tar.gz" -C "$run" "${files[@]}"
    ls -la "$out" ;;
  *) echo "error: unknown step $cmd; valid: start, data, poll, collect" >&2; exit 2 ;;
esac
