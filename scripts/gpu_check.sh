#!/usr/bin/env bash
# One call on the device machine, most important first, inside a time budget:
#   1. build with the CUDA kernels (the toolkit root checked: include/cuda_runtime.h);
#   2. the kernel tests (tests/test_cuda.py and the ops' tests on CUDA);
#   3. compute-sanitizer memcheck and racecheck on one small multi-tensor call;
#   4. paging: its GPU tests and benchmarks/bench_paging.py;
#   5. a quick benchmark (benchmarks/bench_step.py; skipped with nobench, where
#      ../shared/gpu_verify/verify.py measures the steps in the same call);
#   6. the remaining GPU tests.
# Each phase gets min(its cap, what is left of GPU_CHECK_BUDGET_S) and is skipped when too
# little is left. Logs go to $LOG (default $OUT) and are packed after every phase into
# $OUT/gpu_check_logs.tgz (the device tool returns at most 8 files); failures are listed
# grouped by their message.
#   bash scripts/gpu_check.sh [quick] [nobench]   # quick: skips phase 6 and the 1.26 B set
# bitsandbytes for the benchmark travels as wheels in .whl/ (see the device README); they are
# installed into /tmp/site, which callers put on PYTHONPATH for later commands.
set -uo pipefail
OUT=${OUT:-/tmp/adamw8-gpu-check}
LOG=${LOG:-$OUT}
mkdir -p "$OUT" "$LOG"
. "$(dirname "$0")/gpu_env.sh"
QUICK=0; BENCH=1
for a in "$@"; do case $a in quick) QUICK=1 ;; nobench) BENCH=0 ;; *) echo "unknown option $a"; exit 2 ;; esac; done
BUDGET=${GPU_CHECK_BUDGET_S:-450}
left() { echo $(( BUDGET - $(date +%s) + T0 )); }
cap() {  # cap SECONDS MIN: min(SECONDS, left); fails (phase skipped) when fewer than MIN are left
  local l; l=$(left); [ "$l" -ge "$2" ] || return 1; echo $(( l < $1 ? l : $1 ))
}
pack() { if [ "$LOG" != "$OUT" ]; then tar czf "$OUT/gpu_check_logs.tgz" -C "$LOG" . 2>/dev/null; fi; }
if [ ! -f "$CUDA_HOME/include/cuda_runtime.h" ] || [ ! -x "$CUDA_HOME/bin/nvcc" ]; then
  echo "CUDA_HOME=$CUDA_HOME is not a CUDA toolkit root (no include/cuda_runtime.h or bin/nvcc)"; exit 2
fi

if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
# setuptools' version too: pyproject.toml's license table is deprecated from setuptools 77 on (an
# SPDX string, which older ones refuse, replaces it), so the switch waits for the device's version
{ nvidia-smi; python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  python3 -c "import setuptools; print('setuptools', setuptools.__version__)"; } \
  > "$LOG/env.txt" 2>&1

echo "== 1. build ($(elapsed) s)"
if ! python3 -m pip install -v --no-build-isolation --no-deps -e . > "$LOG/build.log" 2>&1; then
  tail -60 "$LOG/build.log"; pack; exit 1
fi
echo "build done at $(elapsed) s" | tee -a "$LOG/env.txt"
python3 -c "
import torch, adamw8
print('torch', torch.__version__, '|', torch.cuda.get_device_name())
print('ops without a compiled CUDA kernel (running the reference):', adamw8.ops._missing['cuda'] or 'none')
" 2>&1 | tee -a "$LOG/env.txt"
# the extension uses the process's C++ runtime: a copy of its own crashed C++ error-message
# formatting in device builds on 2026-11-26 and 2026-11-27 (setup.py, tests/test_fallback.py)
python3 -m pytest -q -p no:cacheprovider tests/test_fallback.py -k runtime > "$LOG/runtime_check.log" 2>&1 \
  || { grep -E "^E " "$LOG/runtime_check.log" | head -8; grep -h "LINK_ARGS\|libstdc" "$LOG/build.log" | head -3; }
tail -1 "$LOG/runtime_check.log" | tee -a "$LOG/env.txt"
pack

failures() {  # failed tests of a junit file, grouped by their message
  [ -f "$1" ] || return 0
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
rc=0
tests() {  # tests NAME CAP MIN pytest-args...: one test phase under the budget
  local name=$1 t; t=$(cap "$2" "$3") || { echo "$name: skipped (budget)"; rc=1; return; }
  shift 3
  timeout "$t" python3 -m pytest -q -m gpu -p no:cacheprovider --junitxml="$LOG/$name.xml" "$@" \
    > "$LOG/$name.log" 2>&1
  local r=$?; [ $r -eq 124 ] && echo "$name: stopped at its ${t} s limit"
  rc=$(( rc | r )); tail -3 "$LOG/$name.log"; failures "$LOG/$name.xml"; pack
}

echo "== 2. kernel tests ($(elapsed) s)"
tests kernel_tests 150 40 tests/test_cuda.py tests/test_ops.py tests/test_quantization.py tests/test_optim_8bit.py

echo "== 3. compute-sanitizer ($(elapsed) s)"
SAN=$(command -v compute-sanitizer || echo "$CUDA_HOME/bin/compute-sanitizer")
for tool in memcheck racecheck; do
  t=$(cap 75 20) || { echo "$tool: skipped (budget)"; rc=1; continue; }
  timeout "$t" "$SAN" --tool "$tool" --error-exitcode 3 python3 scripts/sanitize_case.py \
    > "$LOG/sanitizer_$tool.log" 2>&1
  r=$?; rc=$(( rc | r ))
  echo "$tool: exit $r ($(grep -c "=========.*rror" "$LOG/sanitizer_$tool.log") error lines)"; tail -2 "$LOG/sanitizer_$tool.log"
done
pack

echo "== 4. paging ($(elapsed) s)"
tests paging_tests 60 20 tests/test_paging.py
if t=$(cap 45 15); then
  timeout "$t" python3 benchmarks/bench_paging.py --tensors 8 --steps 10 > "$LOG/bench_paging.md" 2> "$LOG/bench_paging.err"
  cat "$LOG/bench_paging.md"; tail -3 "$LOG/bench_paging.err"; pack
fi

if [ $BENCH = 1 ]; then
  echo "== 5. benchmark ($(elapsed) s)"
  sets="gpt2-160m llama-1.26b"; { [ $QUICK = 1 ] || [ "$(left)" -lt 240 ]; } && sets="gpt2-160m"
  if t=$(cap 150 40); then
    timeout "$t" python3 benchmarks/bench_step.py --sets $sets > "$LOG/bench.md" 2> "$LOG/bench.err"
    cat "$LOG/bench.md"; pack
  fi
fi

if [ $QUICK = 0 ]; then
  echo "== 6. remaining GPU tests ($(elapsed) s)"
  tests gpu_tests 120 45 tests --ignore tests/test_cuda.py --ignore tests/test_ops.py \
    --ignore tests/test_quantization.py --ignore tests/test_optim_8bit.py --ignore tests/test_recompiles.py \
    --ignore tests/test_emulation.py --ignore tests/test_paging.py
fi
echo "gpu_check done in $(elapsed) s (exit $rc)"
pack
exit $rc
