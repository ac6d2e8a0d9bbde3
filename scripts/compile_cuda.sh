#!/usr/bin/env bash
# Compiles the torch-free CUDA sources (csrc/*.cu) with the machine's nvcc for
# sm_90, without a GPU and without torch's headers: CI's check that the kernels
# build.  The torch-facing glue (csrc/cuda/*.cpp) is built on GPU machines only.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for f in csrc/*.cu; do
  echo "nvcc: $f"
  nvcc -std=c++17 -arch=sm_90 -O3 --fmad=false -Xptxas -warn-spills -Icsrc -c "$f" -o "$out/$(basename "$f").o"
done
echo "CUDA sources compile (sm_90)"
