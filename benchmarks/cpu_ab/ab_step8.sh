#!/usr/bin/env bash
# Times two versions of the CPU 8-bit step against each other (ab_step8.cpp): csrc/cpu/kernels.h
# and csrc/cpu/avx512_lookup.h as of two git revisions ("work": the working tree), the rest of
# csrc/ from the working tree, one thread, fp32 (or bf16) parameters, block-wise state, taking turns
# in one process.
#
#   benchmarks/cpu_ab/ab_step8.sh A B [BUILD [ELEMENTS [ROUNDS]]]
#   benchmarks/cpu_ab/ab_step8.sh HEAD work                       # avx512vbmi, 2^24 elements, 20 rounds
#   benchmarks/cpu_ab/ab_step8.sh HEAD~1 HEAD avx2 4194304 30
#
# BUILD: avx512vbmi (default), avx512 or avx2, as the extension's builds (csrc/cpu/kernels_*.cpp).
# AB_DIVIDE=0 takes the plane route's quotient by div_rn instead of the divider; AB_DTYPE=bf16
# or fp16 times parameters and gradients of that type instead of fp32 ones.  Needs the Python
# environment the package is installed in (torch's headers; the maps come from the extension's
# create_dynamic_map) and g++.
set -euo pipefail
if [[ $# -lt 2 || $# -gt 5 ]]; then
  sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
A=$1 B=$2 BUILD=${3:-avx512vbmi} N=${4:-16777216} ROUNDS=${5:-20}
case $BUILD in
  avx512vbmi) ISA=3 ;; avx512) ISA=2 ;; avx2) ISA=1 ;;
  *) echo "ab_step8.sh: BUILD must be avx512vbmi, avx512 or avx2, not '$BUILD'" >&2; exit 2 ;;
esac
[[ $N =~ ^[1-9][0-9]*$ && $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "ab_step8.sh: ELEMENTS and ROUNDS must be positive integers" >&2; exit 2; }
ROOT=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
PY=${PYTHON:-python}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
for side in A B; do
  rev=${!side}
  mkdir -p "$TMP/$side"
  for f in kernels.h avx512_lookup.h; do
    if [[ $rev == work ]]; then cat "$ROOT/csrc/cpu/$f"; else git -C "$ROOT" show "$rev:csrc/cpu/$f"; fi \
      | grep -v '^#pragma once' > "$TMP/$side/$f"  # included twice, once per namespace
  done
done
"$PY" - "$TMP" <<'PY'
import sys, torch, adamw8  # noqa: F401  (the extension's ops)
for name, signed in (("map_signed.inc", True), ("map_unsigned.inc", False)):
    q = torch.ops.adamw8.create_dynamic_map(signed).tolist()
    with open(f"{sys.argv[1]}/{name}", "w") as f:
        f.write(",\n".join(float.hex(x) + "f" for x in q) + "\n")
PY
INC=$("$PY" -c "from torch.utils.cpp_extension import include_paths; print(' '.join('-I' + p for p in include_paths()))")
LIB=$("$PY" -c "from torch.utils.cpp_extension import library_paths; print(library_paths()[0])")
echo "building A=$A B=$B ($BUILD) ..."
g++ -O3 -std=c++20 -ffp-contract=off -fno-math-errno -fno-trapping-math -mtune-ctrl=use_gather \
  -DAB_ISA=$ISA -DAB_KERNELS_A="\"$TMP/A/kernels.h\"" -DAB_KERNELS_B="\"$TMP/B/kernels.h\"" \
  -I"$ROOT/csrc" -I"$TMP" $INC "$ROOT/benchmarks/cpu_ab/ab_step8.cpp" -o "$TMP/ab_step8" \
  -L"$LIB" -lc10 -Wl,-rpath,"$LIB"
"$TMP/ab_step8" "$N" "$ROUNDS" "${AB_DTYPE:-fp32}"
