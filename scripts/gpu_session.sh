#!/usr/bin/env bash
# A whole device session in one call (about 8 minutes; the first H200 session's calls took
# 143-239 s each): every phase bounded, the most important first, at most 8 files under $OUT.
#   1. scripts/gpu_check.sh quick nobench: build, kernel tests, the C++ runtime check,
#      compute-sanitizer, paging tests and benchmarks/bench_paging.py   -> gpu_check_logs.tgz
#   2. the independent check, .gpu_verify/verify.py (carried: ../shared/gpu_verify), with
#      bitsandbytes from .whl/                                           -> verify.json
#   3. scripts/gpu_profile.sh: Nsight Compute text and the paging probe -> gpu_profile_logs.tgz
#   4. the 8-bit kernels built for 4 blocks per SM (ADAMW8_MIN_BLOCKS_8BIT=4, 64 registers,
#      a second build in /tmp/lb4) against the checkout's build, same machine, same profile
#                                                                        -> minblocks_logs.tgz
#   5. scripts/gpu_tune.sh: benchmark, tune, benchmark                   -> gpu_tune_logs.tgz
#      (what does not fit goes into a second, shorter call: bash scripts/gpu_tune.sh)
# Run from the device tool:  bash scripts/gpu_session.sh   (carry .gpu_verify and .whl; timeout_s 590)
set -uo pipefail
OUT=${OUT:-/tmp/adamw8-gpu-session}
mkdir -p "$OUT"
. "$(dirname "$0")/gpu_env.sh"
BUDGET=${GPU_SESSION_BUDGET_S:-550}
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

if [ "$(left)" -gt 130 ]; then
  echo "== 4. 8-bit kernels for 4 blocks per SM ($(elapsed) s)"
  # a second build in /tmp/lb4 (the checkout's build stays), run from there
  rm -rf /tmp/lb4 /tmp/s4 && mkdir -p /tmp/lb4 /tmp/s4
  cp -r adamw8 csrc benchmarks setup.py pyproject.toml README.md /tmp/lb4/ && rm -f /tmp/lb4/adamw8/_C*.so
  B8="python3 benchmarks/bench_step.py --sets llama-1.26b --dtypes fp32 bf16 --steps 10 --warmup 3 --no-bnb --only adamw8"
  if (cd /tmp/lb4 && ADAMW8_MIN_BLOCKS_8BIT=4 timeout $(( $(left) - 60 )) python3 setup.py build_ext --inplace) \
      > /tmp/s4/build.log 2>&1; then
    timeout 60 $B8 > /tmp/s4/bench_default_build.md 2> /tmp/s4/bench_default_build.err
    # run from /tmp/lb4: a script's own folder and the working directory come before PYTHONPATH
    (cd /tmp/lb4 && PYTHONPATH=/tmp/lb4:$PYTHONPATH python3 -c "import adamw8; print('variant imported from', adamw8.__file__)" \
      | tee /tmp/s4/variant.txt
     PYTHONPATH=/tmp/lb4:$PYTHONPATH timeout 60 $B8 > /tmp/s4/bench_minblocks4.md 2> /tmp/s4/bench_minblocks4.err)
    grep -h "AdamW8bit \|^###" /tmp/s4/bench_*.md
  else
    echo "the ADAMW8_MIN_BLOCKS_8BIT=4 build failed or ran out of time"; tail -5 /tmp/s4/build.log
  fi
  tar czf "$OUT/minblocks_logs.tgz" -C /tmp/s4 .
fi

if [ "$(left)" -gt 150 ]; then
  echo "== 5. gpu_tune ($(elapsed) s)"
  mkdir -p /tmp/s5
  OUT=/tmp/s5 timeout $(( $(left) - 10 )) bash scripts/gpu_tune.sh
  tar czf "$OUT/gpu_tune_logs.tgz" -C /tmp/s5 --exclude=traces . 2>/dev/null  # the traces stay behind: size
fi
echo "gpu_session done in $(elapsed) s"; ls "$OUT"
