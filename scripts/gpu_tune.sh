#!/usr/bin/env bash
# The GPU half of the tuning work (issue: profiler-driven tuning), one call on the device
# machine after scripts/gpu_check.sh has built the extension (or building it here), in about
# 5 minutes; logs and the new profile go under $OUT:
#   1. the SPEC section 7 benchmark with the default CUDA launch configs (ADAMW8_PROFILE=none);
#   2. python -m adamw8.tune --device cuda --install (traces, summary, plot, the profile);
#   3. the same benchmark with the new profile: the gain.
# Commit $OUT/tune/*.json into adamw8/profiles/ and the two benchmark tables into RESULTS.md.
set -uo pipefail
OUT=${OUT:-/tmp/adamw8-gpu-tune}
mkdir -p "$OUT"
. "$(dirname "$0")/gpu_env.sh"
if ! python3 -c "import adamw8, sys; sys.exit(0 if adamw8.tuning.available('cuda') else 1)" 2>/dev/null; then
  echo "== build ($(elapsed) s)"
  python3 -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
fi
BENCH="python3 benchmarks/bench_step.py --sets llama-1.26b gpt2-160m --dtypes fp32 bf16 --steps 10 --warmup 3 --no-bnb --only adamw8"
echo "== 1. benchmark, default launch configs ($(elapsed) s)"
ADAMW8_PROFILE=none timeout 120 $BENCH > "$OUT/bench_default.md" 2> "$OUT/bench_default.err"; cat "$OUT/bench_default.md"
echo "== 2. tune ($(elapsed) s)"
timeout 180 python3 -m adamw8.tune --device cuda --install --out "$OUT/tune" 2> "$OUT/tune.err" | tee "$OUT/tune.log" | tail -25
echo "== 3. benchmark, tuned ($(elapsed) s)"
timeout 120 $BENCH > "$OUT/bench_tuned.md" 2> "$OUT/bench_tuned.err"; cat "$OUT/bench_tuned.md"
cp adamw8/profiles/*.json "$OUT/tune/" 2>/dev/null
echo "gpu_tune done in $(elapsed) s"
