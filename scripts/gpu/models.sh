#!/usr/bin/env bash
# Move models/ out of the working tree before a GPU lease, and back after: every device call
# carries the whole tree (64 MiB at most) and models/ holds ~87 MB (the fp32 ONNX and its INT8
# forms). `out` moves it to ../models-lease-stash (refusing to overwrite a stash); `in` moves it
# back, keeping anything the lease wrote into models/ meanwhile (new files win over the stash's).
# usage: bash scripts/gpu/models.sh out|in
set -euo pipefail
cd "$(dirname "$0")/../.."
stash=../models-lease-stash
case "${1:-}" in
  out)
    [ -e "$stash" ] && { echo "error: $stash exists: run 'in' first" >&2; exit 2; }
    mv models "$stash" && mkdir models && echo "models/ moved to $stash; tree: $(du -sh --exclude=.git --exclude=.venv . | cut -f1)" ;;
  in)
    [ -d "$stash" ] || { echo "error: no $stash to bring back" >&2; exit 2; }
    cp -rn "$stash"/. models/ && rm -rf "$stash" && echo "models/ back: $(ls models | wc -l) files" ;;
  *) echo "error: usage: bash scripts/gpu/models.sh out|in" >&2; exit 2 ;;
esac
