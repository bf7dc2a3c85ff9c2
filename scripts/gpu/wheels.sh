#!/usr/bin/env bash
# Here, before a lease: the wheels the GPU machine lacks (kornia for augmentation; its image has
# torch 2.11, numpy, pillow, onnx, onnxruntime, matplotlib, tqdm), for its Python 3.12, into .whl/
# (git-excluded). Carry ".whl" with the calls that train. See scripts/gpu/README.md.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
exclude=$(git rev-parse --git-path info/exclude); mkdir -p "$(dirname "$exclude")"
grep -qx "/.whl/" "$exclude" 2>/dev/null || echo "/.whl/" >> "$exclude"
rm -rf .whl
for pkg in kornia==0.9.0 kornia-rs==0.2.0; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any -d .whl "$pkg"
done
du -sh .whl && ls .whl
