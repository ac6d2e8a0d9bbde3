#!/usr/bin/env bash
# One call on the device machine: build with CUDA, run the GPU tests, run the benchmark.
# Logs go under $OUT (the device tool returns them).  Usage, from the repo root:
#   bash scripts/gpu_check.sh [quick]      # quick: GPU tests + the 160M benchmark only
# bitsandbytes for the benchmark travels as wheels in .whl/ (see the device README).
set -uo pipefail
OUT=${OUT:-/tmp/adamw8-gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
export ADAMW8_EXPERIMENTAL_CUDA=1  # build the CUDA kernels (not yet validated: see README)
MODE=${1:-full}

if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
{ nvidia-smi; python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } \
  > "$OUT/env.txt" 2>&1

echo "== build"
start=$(date +%s)
if ! python3 -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1; then
  tail -60 "$OUT/build.log"; exit 1
fi
echo "build took $(( $(date +%s) - start )) s" | tee -a "$OUT/env.txt"
python3 -c "import adamw8; print('reference fallback in use:', adamw8.ops.using_reference)" | tee -a "$OUT/env.txt"

echo "== GPU tests"
# no -x: one run should show every failing GPU test, listed at the end (-rf)
python3 -m pytest -q -rf -m gpu tests --junitxml="$OUT/gpu_tests.xml" > "$OUT/gpu_tests.log" 2>&1
rc=$?
grep -E "^FAILED|passed|failed" "$OUT/gpu_tests.log" | tail -40

echo "== benchmark"
if [ "$MODE" = quick ]; then
  python3 benchmarks/bench_step.py --sets gpt2-160m > "$OUT/bench.md" 2> "$OUT/bench.err"
else
  python3 benchmarks/bench_step.py > "$OUT/bench.md" 2> "$OUT/bench.err"
fi
cat "$OUT/bench.md"
exit $rc
