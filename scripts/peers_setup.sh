#!/usr/bin/env bash
# What `python -m bench.peers` needs beside the project's own venv, all outside the work tree:
#   hey                          the load generator (Debian's package), installed if missing;
#   $PEERS_HOME/litserve-venv    LitServe, on this machine's python3;
#   $PEERS_HOME/triton-venv      PyTriton 0.7 (Triton Inference Server), on a Python 3.12 built
#                                with a shared libpython (the server's Python-model stub loads
#                                libpython3.12.so), found in $PYTHON312, on PATH or under pyenv.
# Both venvs get the engine and decode the service uses (openvino, onnxruntime, numpy, pillow)
# and take the project's own inference/ and common/ from PYTHONPATH. Idempotent: a venv whose
# packages import is kept. PEERS_HOME defaults to ~/.cache/tin-peers.
set -euo pipefail

PEERS_HOME=${PEERS_HOME:-$HOME/.cache/tin-peers}
OPENVINO=openvino==2026.4.1
COMMON=("$OPENVINO" onnxruntime numpy pillow)
PIP=(pip install -q --disable-pip-version-check)
mkdir -p "$PEERS_HOME"

if ! command -v hey >/dev/null; then
  echo "installing hey (apt)"
  apt-get update -q && apt-get install -y -q hey
fi

# venv DIR PYTHON IMPORTS PACKAGES...: make DIR with PYTHON and install PACKAGES unless IMPORTS
# (a Python import line) already succeeds there.
venv() {
  local dir=$1 python=$2 imports=$3
  shift 3
  if [ -x "$dir/bin/python" ] && "$dir/bin/python" -c "$imports" 2>/dev/null; then
    echo "$dir: ready"
    return
  fi
  echo "$dir: creating with $("$python" -V)"
  "$python" -m venv "$dir"
  "$dir/bin/python" -m "${PIP[@]}" "$@"
  "$dir/bin/python" -c "$imports"
}

# A Python 3.12 whose libpython3.12.so exists (pyenv's builds here have --enable-shared).
shared_312() {
  local candidates=("${PYTHON312:-}" "$(command -v python3.12 || true)")
  candidates+=("${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12)
  for python in "${candidates[@]}"; do
    [ -n "$python" ] && [ -x "$python" ] || continue
    # a pyenv shim resolves to the real interpreter (or fails where no 3.12 is installed)
    python=$("$python" -c 'import sys; print(sys.executable)' 2>/dev/null) || continue
    if "$python" -c 'import os, sys, sysconfig as s
lib = os.path.join(s.get_config_var("LIBDIR"), s.get_config_var("LDLIBRARY"))
sys.exit(not (sys.version_info[:2] == (3, 12) and s.get_config_var("Py_ENABLE_SHARED")
              and os.path.exists(lib)))'; then
      echo "$python"
      return
    fi
  done
  return 1
}

venv "$PEERS_HOME/litserve-venv" python3 "import litserve, openvino, onnxruntime, PIL" \
  litserve "${COMMON[@]}"

if python312=$(shared_312); then
  venv "$PEERS_HOME/triton-venv" "$python312" "import pytriton, openvino, onnxruntime, PIL" \
    nvidia-pytriton==0.7.0 "${COMMON[@]}"
else
  echo "no Python 3.12 with a shared libpython (PYTHON312, python3.12, pyenv 3.12.x):" \
    "Triton's row will say 'not run'" >&2
fi
