#!/usr/bin/env bash
# CI's build of the whole CUDA extension (kernels and torch glue) on a machine without a GPU.
#   - a second venv (.ci-venv-cuda) with a CUDA build of torch (2.14.1, CUDA 13: ~3 min, 5.5 GB);
#   - the tracked tree copied to a scratch directory, so this build's adamw8/_C does not
#     replace the CPU build of the checkout;
#   - setup.py finds the toolkit root itself (CUDA_HOME; the nvcc on PATH may be a wrapper);
#   - then: import adamw8 with no GPU, the CUDA ops registered, the 8-bit update's SASS
#     instructions per element within their budget, and the CPU suite.
# Skipped, with a message, where there is no nvcc.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nvcc >/dev/null 2>&1; then
  echo "ci_cuda_build: no nvcc on this machine; CUDA build skipped"
  exit 0
fi
ROOT=$PWD
VENV=${ADAMW8_CUDA_VENV:-$ROOT/.ci-venv-cuda}
TREE=$(mktemp -d)
trap 'rm -rf "$TREE"' EXIT
if [ ! -x "$VENV/bin/python" ]; then python3 -m venv "$VENV"; fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q torch==2.14.1 ninja setuptools wheel pytest numpy hypothesis
git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$TREE"
cd "$TREE"
start=$(date +%s)
TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=${MAX_JOBS:-2} \
  "$VENV/bin/python" -m pip install -q --no-build-isolation --no-deps -e . > build.log 2>&1 \
  || { tail -80 build.log; exit 1; }
echo "ci_cuda_build: CUDA extension built in $(( $(date +%s) - start )) s"
"$VENV/bin/python" - <<'PY'
import torch, adamw8
assert torch.version.cuda is not None and not torch.cuda.is_available()
missing = adamw8.ops._missing["cuda"]  # the kernel-bearing ops without a compiled CUDA kernel
assert not missing, f"CUDA kernels missing from the build: {missing}"
print("torch", torch.__version__, "| every op has its compiled CUDA kernel:", adamw8.ops._OPS)
PY
# The 8-bit update's instructions per element (scripts/sass_element.py; cuobjdump from the
# triton wheel the CUDA torch brings): a budget about 5% over today's count (79.8 fp32, 82.1
# bf16), so a change that puts a branch or a slow path back into the element loop fails here.
"$VENV/bin/python" "$TREE/scripts/sass_element.py" --budget "unit fp32=84" --budget "unit bf16=86"
"$VENV/bin/python" -m pytest -q -x tests
