#!/usr/bin/env bash
# On the GPU machine, for the papers' rows once the shipped model's lease work is done (the model
# itself goes through lease.sh): install the carried wheels, decode the data once on all cores,
# then start each PRESET of a comma-separated list detached, all sharing the GPU, each with its own
# log, pid and MINUTES budget; collect_rows.sh brings them back.
# usage: bash scripts/gpu/start.sh PRESET[,PRESET...] [MINUTES=20] [extra training.train args...]
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
IFS=, read -ra names <<< "$preset"
for name in "${names[@]}"; do
  setsid nohup python3 -m training.train --preset "$name" --data "$data" --out "$runs/$name" \
    --time-limit "$minutes" "$@" > "$runs/$name.log" 2>&1 < /dev/null &
  echo $! > "$runs/$name.pid"               # collect*.sh wait on this pid (not `pgrep -f`, which
                                            # matches the polling shell's own command line)
  echo "started $name for $minutes min: tail -c 400 $runs/$name.log"
done
sleep "${WAIT:-60}"
for name in "${names[@]}"; do tail -c 300 "$runs/$name.log"; echo; done
