#!/usr/bin/env bash
# A whole device session in one call (about 8 minutes; the H200 sessions' calls took 143-434 s
# each): every phase bounded, the most important first, at most 8 files under $OUT.
#   0. in the background, on the CPUs: the variant build of phase 3 (VARIANT, below)
#   1. scripts/gpu_check.sh $GPU_CHECK_ARGS (default: quick nobench): build, kernel tests, the
#      C++ runtime check, compute-sanitizer, paging tests and benchmarks/bench_paging.py
#      (without quick: the remaining GPU tests too)                  -> gpu_check_logs.tgz
#   2. the independent check, .gpu_verify/verify.py (carried: ../shared/gpu_verify), with
#      bitsandbytes from .whl/                                           -> verify.json
#   2b. scripts/reduce_overhead_probe.py: what the CUDA-graph step costs, and the device work of a
#       step eager and graphed                                        -> gpu_check_logs.tgz
#   2c. scripts/compile_gap_probe.py: the compiled step against eager on the 1.26 B set, with
#       32 and 64 tensors per call, and each one's kernels, kernel time and span -> gpu_check_logs.tgz
#   3. scripts/gpu_variant.sh: the checkout's build against VARIANT's (a build option; stage2 by
#      default), taking turns on the SPEC section 7 benchmark           -> variant_logs.tgz
#   4. scripts/gpu_profile.sh: Nsight Compute text and the paging probe -> gpu_profile_logs.tgz
#   5. scripts/gpu_tune.sh: benchmark, tune, benchmark                   -> gpu_tune_logs.tgz
#      (what does not fit goes into a second, shorter call: bash scripts/gpu_tune.sh)
# Run from the device tool:  bash scripts/gpu_session.sh   (carry .gpu_verify and .whl; timeout_s 590)
# A shorter second call: GPU_SESSION_BUDGET_S=300 GPU_CHECK_ARGS=nobench bash scripts/gpu_session.sh
set -uo pipefail
OUT=${OUT:-/tmp/adamw8-gpu-session}
mkdir -p "$OUT"
. "$(dirname "$0")/gpu_env.sh"
BUDGET=${GPU_SESSION_BUDGET_S:-550}
left() { echo $(( BUDGET - $(date +%s) + T0 )); }

# a build option measured against the checkout: "NAME VAR=VALUE...", built on the CPUs while
# the GPU tests run ("" for none)
# (e.g. VARIANT="minblocks4 ADAMW8_MIN_BLOCKS_8BIT=4").  Unset: "stage2 ADAMW8_STAGE=2", the kernels
# of fp32 parameters and the 32-bit ones staged by cross-lane copies, built and proven in the
# emulation on 2026-11-27 and not yet measured (docs/design.md, "Staging the next unit").
VARIANT=${VARIANT-stage2 ADAMW8_STAGE=2}
if [ -n "$VARIANT" ]; then
  # shellcheck disable=SC2086
  LOG=/tmp/s4 MAX_JOBS=8 bash scripts/gpu_variant.sh build $VARIANT > /tmp/variant_build.log 2>&1 &
  VARIANT_PID=$!
fi

echo "== 1. gpu_check ($(elapsed) s)"
# shellcheck disable=SC2086
LOG=/tmp/s1 GPU_CHECK_BUDGET_S=${GPU_CHECK_BUDGET_S:-220} bash scripts/gpu_check.sh ${GPU_CHECK_ARGS:-quick nobench}
export PYTHONPATH=/tmp/site  # bitsandbytes, installed by gpu_check from .whl/

if [ -f .gpu_verify/verify.py ] && [ "$(left)" -gt 90 ]; then
  echo "== 2. verify.py ($(elapsed) s)"
  VERIFY_BUDGET_S=${VERIFY_BUDGET_S:-120} timeout $(( $(left) < 200 ? $(left) - 20 : 180 )) \
    python3 .gpu_verify/verify.py --out "$OUT" > /tmp/verify.log 2>&1
  echo "verify exit $?"; grep -v '^ \|^{\|^}' /tmp/verify.log | tail -30
  mkdir -p /tmp/s1 && cp /tmp/verify.log /tmp/s1/ && tar czf "$OUT/gpu_check_logs.tgz" -C /tmp/s1 .
fi

if [ "$(left)" -gt 110 ]; then
  echo "== 2b. reduce-overhead probe ($(elapsed) s)"
  timeout 90 python3 scripts/reduce_overhead_probe.py > /tmp/s1/reduce_overhead.md 2> /tmp/s1/reduce_overhead.err
  echo "exit $?"; cat /tmp/s1/reduce_overhead.md; tail -3 /tmp/s1/reduce_overhead.err
  tar czf "$OUT/gpu_check_logs.tgz" -C /tmp/s1 .
fi

if [ "$(left)" -gt 150 ]; then
  echo "== 2c. compile-gap probe ($(elapsed) s)"
  timeout 100 python3 scripts/compile_gap_probe.py > /tmp/s1/compile_gap.md 2> /tmp/s1/compile_gap.err
  echo "exit $?"; cat /tmp/s1/compile_gap.md; tail -3 /tmp/s1/compile_gap.err
  tar czf "$OUT/gpu_check_logs.tgz" -C /tmp/s1 .
fi

if [ -n "$VARIANT" ] && [ "$(left)" -gt 70 ]; then
  echo "== 3. the checkout against the variant build ($VARIANT) ($(elapsed) s)"
  wait "$VARIANT_PID"; echo "variant build exit $?"
  LOG=/tmp/s4 bash scripts/gpu_variant.sh bench "${VARIANT%% *}"
  tar czf "$OUT/variant_logs.tgz" -C /tmp/s4 .
fi

if [ "$(left)" -gt 120 ]; then
  echo "== 4. gpu_profile ($(elapsed) s)"
  LOG=/tmp/s3 NCU_TIMEOUT_S=$(( $(left) < 200 ? 60 : 120 )) bash scripts/gpu_profile.sh
fi

if [ "$(left)" -gt 150 ]; then
  echo "== 5. gpu_tune ($(elapsed) s)"
  mkdir -p /tmp/s5
  OUT=/tmp/s5 timeout $(( $(left) - 10 )) bash scripts/gpu_tune.sh
  tar czf "$OUT/gpu_tune_logs.tgz" -C /tmp/s5 --exclude=traces . 2>/dev/null  # the traces stay behind: size
fi
echo "gpu_session done in $(elapsed) s"; ls "$OUT"
