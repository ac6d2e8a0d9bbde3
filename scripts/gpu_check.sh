#!/usr/bin/env bash
# One call on the device machine, most important first, in <= 8 minutes:
#   1. build with the CUDA kernels (the toolkit root checked: include/cuda_runtime.h);
#   2. the kernel tests (tests/test_cuda.py and the ops' tests on CUDA);
#   3. compute-sanitizer memcheck and racecheck on one small multi-tensor call;
#   4. a quick benchmark (benchmarks/bench_step.py);
#   4b. paging: its GPU tests and benchmarks/bench_paging.py;
#   5. the remaining GPU tests.
# Logs go under $OUT (the device tool returns them); failures are listed grouped by message.
#   bash scripts/gpu_check.sh [quick]      # quick: skips step 5 and the 1.26 B benchmark set
# bitsandbytes for the benchmark travels as wheels in .whl/ (see the device README).
set -uo pipefail
OUT=${OUT:-/tmp/adamw8-gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
export ADAMW8_EXPERIMENTAL_CUDA=1  # build the CUDA kernels (not yet validated on a GPU: see README)
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
MODE=${1:-full}
BUDGET=${GPU_CHECK_BUDGET_S:-450}  # the whole call stays under ~8 minutes: later phases shrink or skip
T0=$(date +%s)
elapsed() { echo $(( $(date +%s) - T0 )); }
left() { echo $(( BUDGET - $(date +%s) + T0 )); }
if [ ! -f "$CUDA_HOME/include/cuda_runtime.h" ] || [ ! -x "$CUDA_HOME/bin/nvcc" ]; then
  echo "CUDA_HOME=$CUDA_HOME is not a CUDA toolkit root (no include/cuda_runtime.h or bin/nvcc)"; exit 2
fi

if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
{ nvidia-smi; python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } \
  > "$OUT/env.txt" 2>&1

echo "== 1. build ($(elapsed) s)"
if ! python3 -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1; then
  tail -60 "$OUT/build.log"; exit 1
fi
echo "build done at $(elapsed) s" | tee -a "$OUT/env.txt"
python3 -c "
import adamw8
ops = ('fused_step', 'fused_step_multi', 'quantize', 'dequantize')
print('ops without a compiled CUDA kernel (running the reference):', adamw8.ops._missing['cuda'] or 'none')
" | tee -a "$OUT/env.txt"

failures() {  # failed tests of a junit file, grouped by their message
  python3 - "$1" <<'PY'
import collections, sys, xml.etree.ElementTree as ET
groups = collections.defaultdict(list)
for case in ET.parse(sys.argv[1]).iter("testcase"):
    for bad in list(case.findall("failure")) + list(case.findall("error")):
        msg = (bad.get("message") or "").strip().splitlines()
        groups[msg[0][:160] if msg else "(no message)"].append(case.get("name"))
for msg, names in sorted(groups.items(), key=lambda kv: -len(kv[1])):
    print(f"  {len(names):3d} x {msg}\n        e.g. {', '.join(names[:4])}")
print(f"  {sum(map(len, groups.values()))} failing tests in {len(groups)} groups")
PY
}

echo "== 2. kernel tests ($(elapsed) s)"
timeout 150 python3 -m pytest -q -m gpu tests/test_cuda.py tests/test_ops.py tests/test_quantization.py \
  tests/test_optim_8bit.py --junitxml="$OUT/kernel_tests.xml" > "$OUT/kernel_tests.log" 2>&1
rc=$?
tail -3 "$OUT/kernel_tests.log"; [ -f "$OUT/kernel_tests.xml" ] && failures "$OUT/kernel_tests.xml"

echo "== 3. compute-sanitizer ($(elapsed) s)"
for tool in memcheck racecheck; do
  timeout 75 compute-sanitizer --tool "$tool" --error-exitcode 3 python3 scripts/sanitize_case.py \
    > "$OUT/sanitizer_$tool.log" 2>&1
  echo "$tool: exit $? ($(grep -c "=========.*rror" "$OUT/sanitizer_$tool.log") error lines)"; tail -2 "$OUT/sanitizer_$tool.log"
done

echo "== 4. benchmark ($(elapsed) s)"
sets="gpt2-160m llama-1.26b"; { [ "$MODE" = quick ] || [ "$(left)" -lt 240 ]; } && sets="gpt2-160m"
timeout $(( $(left) > 150 ? 150 : 60 )) python3 benchmarks/bench_step.py --sets $sets > "$OUT/bench.md" 2> "$OUT/bench.err"
cat "$OUT/bench.md"

if [ "$(left)" -gt 60 ]; then
  echo "== 4b. paging ($(elapsed) s)"
  timeout 60 python3 -m pytest -q -m gpu tests/test_paging.py --junitxml="$OUT/paging_tests.xml" \
    > "$OUT/paging_tests.log" 2>&1
  rc=$(( rc | $? ))
  tail -3 "$OUT/paging_tests.log"; [ -f "$OUT/paging_tests.xml" ] && failures "$OUT/paging_tests.xml"
  timeout 45 python3 benchmarks/bench_paging.py --tensors 8 --steps 10 > "$OUT/bench_paging.md" 2> "$OUT/bench_paging.err"
  cat "$OUT/bench_paging.md"
fi

if [ "$MODE" != quick ] && [ "$(left)" -gt 45 ]; then
  echo "== 5. remaining GPU tests ($(elapsed) s)"
  timeout $(( $(left) > 120 ? 120 : $(left) )) python3 -m pytest -q -m gpu tests --ignore tests/test_cuda.py \
    --ignore tests/test_ops.py --ignore tests/test_quantization.py --ignore tests/test_optim_8bit.py \
    --ignore tests/test_recompiles.py --ignore tests/test_emulation.py --ignore tests/test_paging.py \
    --junitxml="$OUT/gpu_tests.xml" > "$OUT/gpu_tests.log" 2>&1
  rc=$(( rc | $? ))
  tail -3 "$OUT/gpu_tests.log"; [ -f "$OUT/gpu_tests.xml" ] && failures "$OUT/gpu_tests.xml"
fi
echo "gpu_check done in $(elapsed) s"
exit $rc
