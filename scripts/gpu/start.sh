#!/usr/bin/env bash
# On the GPU machine, after the data has moved in (../shared/tools/device-data-parts): install the
# carried wheels, decode the data once on all cores, then start PRESET detached with a time budget
# (the schedule anneals to its end exactly when the budget does, so the run always lands).
# usage: bash scripts/gpu/start.sh [PRESET=final] [MINUTES=20] [extra training.train args...]
set -euo pipefail
preset=${1:-final}; minutes=${2:-20}; shift $(( $# > 2 ? 2 : $# ))
data=${DATA:-/root/data/tiny-imagenet-200.zip}
runs=${RUNS:-/root/run}
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD
python3 -c "import torch, kornia; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
python3 -m training.data "$data"            # decode into the cache before the clock starts
mkdir -p "$runs"
setsid nohup python3 -m training.train --preset "$preset" --data "$data" --out "$runs/$preset" \
  --time-limit "$minutes" "$@" > "$runs/$preset.log" 2>&1 < /dev/null &
echo $! > "$runs/$preset.pid"               # collect.sh waits on this pid (not `pgrep -f`, which
                                            # matches the polling shell's own command line)
echo "started $preset for $minutes min: tail -c 400 $runs/$preset.log"
sleep "${WAIT:-60}"
tail -c 400 "$runs/$preset.log"; echo
