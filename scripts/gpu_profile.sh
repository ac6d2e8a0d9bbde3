#!/usr/bin/env bash
# Where the step's time goes, on the device machine (after scripts/gpu_check.sh, or building):
#   1. Nsight Compute (--clock-control none, the full section set) over one step of each
#      scripts/ncu_case.py case: the report at $NCU_REP.ncu-rep (default /tmp/adamw8-ncu: 14 MB,
#      NCU_REP=$OUT/ncu brings it back), and as text ncu_details.txt (DRAM throughput, stall
#      reasons, instruction mix) and ncu_sass.csv (per-instruction samples);
#   2. scripts/paging_probe.py: the device's free memory through page-out and page-in.
# Logs go to $LOG (default $OUT), packed into $OUT/gpu_profile_logs.tgz.
set -uo pipefail
OUT=${OUT:-/tmp/adamw8-gpu-profile}
LOG=${LOG:-$OUT}
mkdir -p "$OUT" "$LOG"
. "$(dirname "$0")/gpu_env.sh"
pack() { if [ "$LOG" != "$OUT" ]; then tar czf "$OUT/gpu_profile_logs.tgz" -C "$LOG" . 2>/dev/null; fi; }
if ! python3 -c "import adamw8, sys; sys.exit(0 if not adamw8.ops._missing['cuda'] else 1)" 2>/dev/null; then
  echo "== build ($(elapsed) s)"
  python3 -m pip install --no-build-isolation --no-deps -e . > "$LOG/build.log" 2>&1 || { tail -40 "$LOG/build.log"; exit 1; }
fi
REP=${NCU_REP:-/tmp/adamw8-ncu}
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu "$CUDA_HOME"/bin/ncu 2>/dev/null | head -1)
echo "== 1. ncu ($(elapsed) s): $NCU"
timeout "${NCU_TIMEOUT_S:-150}" "$NCU" --clock-control none --profile-from-start off --set full \
  -k regex:fused_step_kernel -f -o "$REP" python3 scripts/ncu_case.py > "$LOG/ncu.log" 2>&1
echo "ncu exit $? ($(elapsed) s)"; tail -4 "$LOG/ncu.log"
if [ -f "$REP.ncu-rep" ]; then
  "$NCU" -i "$REP.ncu-rep" --page details --print-units base > "$LOG/ncu_details.txt" 2>&1
  "$NCU" -i "$REP.ncu-rep" --page source --print-source sass --csv > "$LOG/ncu_sass.csv" 2>&1
  grep -E "^  [a-z_]+.*fused_step_kernel|DRAM Throughput|Memory Throughput|Duration|Compute \(SM\) Throughput|Achieved Occupancy|Registers Per|Executed Ipc A|Issue Slots Busy|One or More Eligible|Warp Cycles Per Issued" \
    "$LOG/ncu_details.txt" | head -60
fi
pack
echo "== 2. paging probe ($(elapsed) s)"
timeout 60 python3 scripts/paging_probe.py 4 2>&1 | tee "$LOG/paging_probe.log"
pack
echo "gpu_profile done in $(elapsed) s"
