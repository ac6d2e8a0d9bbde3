#!/usr/bin/env bash
# A whole device session in one call (about 8 minutes; the first H200 session's calls took
# 143-239 s each): every phase bounded, the most important first, at most 8 files under $OUT.
#   1. scripts/gpu_check.sh quick nobench: build, kernel tests, the C++ runtime check,
#      compute-sanitizer, paging tests and benchmarks/bench_paging.py   -> gpu_check_logs.tgz
#   2. the independent check, .gpu_verify/verify.py (carried: ../shared/gpu_verify), with
#      bitsandbytes from .whl/                                           -> verify.json
#   3. scripts/gpu_profile.sh: Nsight Compute text and the paging probe -> gpu_profile_logs.tgz
#   4. scripts/gpu_tune.sh: benchmark, tune, benchmark                   -> gpu_tune_logs.tgz
# Run from the device tool:  bash scripts/gpu_session.sh   (carry .gpu_verify and .whl; timeout_s 560)
set -uo pipefail
OUT=${OUT:-/tmp/adamw8-gpu-session}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
T0=$(date +%s)
elapsed() { echo $(( $(date +%s) - T0 )); }
BUDGET=${GPU_SESSION_BUDGET_S:-520}
left() { echo $(( BUDGET - $(date +%s) + T0 )); }

echo "== 1. gpu_check ($(elapsed) s)"
LOG=/tmp/s1 GPU_CHECK_BUDGET_S=${GPU_CHECK_BUDGET_S:-220} bash scripts/gpu_check.sh quick nobench
export PYTHONPATH=/tmp/site  # bitsandbytes, installed by gpu_check from .whl/

if [ -f .gpu_verify/verify.py ] && [ "$(left)" -gt 90 ]; then
  echo "== 2. verify.py ($(elapsed) s)"
  VERIFY_BUDGET_S=${VERIFY_BUDGET_S:-120} timeout $(( $(left) < 200 ? $(left) - 20 : 180 )) \
    python3 .gpu_verify/verify.py --out "$OUT" > /tmp/verify.log 2>&1
  echo "verify exit $?"; grep -v '^ \|^{\|^}' /tmp/verify.log | tail -30
  mkdir -p /tmp/s1 && cp /tmp/verify.log /tmp/s1/ && tar czf "$OUT/gpu_check_logs.tgz" -C /tmp/s1 .
fi

if [ "$(left)" -gt 120 ]; then
  echo "== 3. gpu_profile ($(elapsed) s)"
  LOG=/tmp/s3 NCU_TIMEOUT_S=$(( $(left) < 200 ? 60 : 120 )) bash scripts/gpu_profile.sh
fi

if [ "$(left)" -gt 150 ]; then
  echo "== 4. gpu_tune ($(elapsed) s)"
  mkdir -p /tmp/s4
  OUT=/tmp/s4 timeout $(( $(left) - 10 )) bash scripts/gpu_tune.sh
  tar czf "$OUT/gpu_tune_logs.tgz" -C /tmp/s4 --exclude=traces . 2>/dev/null  # the traces stay behind: size
fi
echo "gpu_session done in $(elapsed) s"; ls "$OUT"
