"""SASS instructions of the 8-bit element update (benchmarks/RESULTS.md, "CUDA kernels").

    python scripts/sass_element.py [--arch sm_90] [--list 'unit fp32'] [--budget 'unit fp32=84' ...]

Compiles small kernels built from the update kernels' own functions (adamw8_math.h,
fused_step_kernels.cuh) with the extension's nvcc flags, and counts the instructions that run
on each kernel's main path in the SASS cuobjdump prints: from the entry (for the unit kernels,
from the barrier after the maps are loaded) to the first unconditional EXIT, following every
branch as the common case takes it: a conditional branch over code that calls a slow path is
taken, any other falls through.  Rows:

* search / packed / bounded: one element (dequantize, adamw_element, both quantizations) by
  the search route (any sorted map), the packed route with divisions, and the bounded route
  (div_rn, the packed sums of nearest_lut.h, sqrt_fast), what the update kernels run for the
  dynamic maps.  The reciprocals of the absmax are kernel arguments here.
* unit fp32 / unit bf16: a lane's whole unit of the update kernel's common case (bounded
  route, no amsgrad, no AMP scale, no clipping): the loads, eight element updates, the warp
  maxima, the reciprocals, the quantizations and the stores, per element (count / 8).  The
  per-tensor scalars come from memory (the update kernel keeps them in registers: about 1.5
  per element of this count are their loads).

With --budget ROW=N it exits 1 when a row's count per element is over N (CI's CUDA build runs
it, so a change that puts a branch or a slow path back into the element loop fails there), and
0 with a note where nvcc or cuobjdump is missing.

Needs nvcc and cuobjdump (on PATH, in $CUDA_HOME/bin, or the copy the triton wheel ships).
"""

from __future__ import annotations

import argparse
import collections
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]

KERNEL = r"""
#include "fused_step_kernels.cuh"
using namespace adamw8;
using namespace adamw8::cuda;

__device__ __forceinline__ void load_tables(Maps8& s, const uint32_t* maps) {
  // from memory, so the compiler cannot fold a table read
  for (int i = threadIdx.x; i < static_cast<int>(sizeof(Maps8) / 4); i += blockDim.x) {
    reinterpret_cast<uint32_t*>(&s)[i] = maps[i];
  }
  __syncthreads();
}

// one element; kRoute 0: search, 1: packed, 2: bounded
template <int kRoute>
__global__ void elem(const float* p_, const float* g_, const uint8_t* c1_, const uint8_t* c2_, float oa1, float oa2,
                     AdamScalars sc, float na1, float na2, float r1, float r2, float* pout, uint8_t* o1,
                     uint8_t* o2, const uint32_t* maps) {
  __shared__ Maps8 s;
  load_tables(s, maps);
  const int i = threadIdx.x;
  float p = p_[i], g = g_[i];
  float m = dequantize_value(s.q1, c1_[i], oa1), v = dequantize_value(s.q2, c2_[i], oa2), h = 0.0f;
  bool ok = true;
  if constexpr (kRoute == 2) {
    adamw_element<false, true, true>(sc, g, p, m, v, h, ok);
    o1[i] = static_cast<uint8_t>(packed_sum_signed(s.t.packed.word1, float_bits(m), float_bits(div_rn(m, na1, r1))) >> 16);
    o2[i] = static_cast<uint8_t>(packed_sum_unsigned(s.t.packed.word2, float_bits(v), float_bits(div_rn(v, na2, r2))) >> 16);
  } else {
    adamw_element<false>(sc, g, p, m, v, h);
    o1[i] = quantize_8bit<kRoute == 1>(s, 1, m, na1, true);
    o2[i] = quantize_8bit<kRoute == 1>(s, 2, v, na2, false);
  }
  pout[i] = ok ? p : 0.0f;
}
template __global__ void elem<0>(const float*, const float*, const uint8_t*, const uint8_t*, float, float, AdamScalars,
                                 float, float, float, float, float*, uint8_t*, uint8_t*, const uint32_t*);
template __global__ void elem<1>(const float*, const float*, const uint8_t*, const uint8_t*, float, float, AdamScalars,
                                 float, float, float, float, float*, uint8_t*, uint8_t*, const uint32_t*);
template __global__ void elem<2>(const float*, const float*, const uint8_t*, const uint8_t*, float, float, AdamScalars,
                                 float, float, float, float, float*, uint8_t*, uint8_t*, const uint32_t*);

// a lane's unit, as unit_8bit and write_unit_8bit run it in the common case
template <typename T>
__global__ void __launch_bounds__(kThreads, kMinBlocks8) unit(const T* p_, const T* g_, uint8_t* c1_, uint8_t* c2_,
                                                             float oa1, float oa2, const AdamScalars* scp, T* pout,
                                                             const uint32_t* maps) {
  __shared__ Maps8 s;
  load_tables(s, maps);
  const TensorScalars ts{*scp, 1.0f};
  const int64_t off = (threadIdx.x & 31) * kPerLane;
  float p[kPerLane], g[kPerLane], m[kPerLane], v[kPerLane], h[kPerLane];
  uint32_t c1[kPerLane], c2[kPerLane], c3[kPerLane];
  Elem<T>::load8(g_ + off, g);
  Elem<T>::load8(p_ + off, p);
  load8_codes(c1_ + off, c1);
  load8_codes(c2_ + off, c2);
  float na1 = 0.0f, na2 = 0.0f, na3 = 0.0f;
  bool ok = true;
  update_lane_8bit<false, true, kPrepPlain>(false, s, ts, 1.0f, oa1, oa2, 0.0f, c1, c2, c3, p, g, m, v, h, na1, na2,
                                            na3, ok);
  if (!ok) {
    Elem<T>::load8(g_ + off, g);
    Elem<T>::load8(p_ + off, p);
    na1 = na2 = 0.0f;
    update_lane_8bit<false, false, kPrepPlain>(false, s, ts, 1.0f, oa1, oa2, 0.0f, c1, c2, c3, p, g, m, v, h, na1,
                                               na2, na3, ok);
  }
  na1 = warp_max(na1);
  na2 = warp_max(na2);
  Elem<T>::store8(pout + off, p);
  quantize_lane_bounded<false>(s, m, v, h, na1, na2, 0.0f, c1, c2, c3);
  st_u2(c1_ + off, pack8_codes<2>(c1));
  st_u2(c2_ + off, pack8_codes<2>(c2));
}
template __global__ void unit<float>(const float*, const float*, uint8_t*, uint8_t*, float, float, const AdamScalars*,
                                     float*, const uint32_t*);
template __global__ void unit<__nv_bfloat16>(const __nv_bfloat16*, const __nv_bfloat16*, uint8_t*, uint8_t*, float,
                                             float, const AdamScalars*, __nv_bfloat16*, const uint32_t*);
"""

# mangled-name piece -> (row, elements the kernel updates per thread)
VARIANTS = {"4elemILi0E": ("search", 1), "4elemILi1E": ("packed", 1), "4elemILi2E": ("bounded", 1),
            "4unitIfE": ("unit fp32", 8), "4unitI13__nv_bfloat16E": ("unit bf16", 8)}


def find_tool(name: str) -> str | None:
    cands = [shutil.which(name)]
    cuda = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    cands.append(os.path.join(cuda, "bin", name))
    try:
        import triton  # the wheel ships cuobjdump

        cands.append(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name))
    except ImportError:
        pass
    for c in cands:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def main_path(fn_text: str) -> list[str]:
    """The instructions the common case runs, from the barrier after the tables are loaded to the
    first unconditional EXIT (module docstring), NOPs left out."""
    prog = []
    for line in fn_text.split("\n"):
        m = re.match(r"^\s*/\*([0-9a-f]{4,})\*/\s*(.*?)\s*;", line)
        if m:
            prog.append((int(m.group(1), 16), m.group(2).strip()))
    where = {addr: i for i, (addr, _) in enumerate(prog)}
    out, i, started = [], 0, False
    while i < len(prog):
        op = prog[i][1]
        if op.startswith("NOP"):
            i += 1
            continue
        if not started:
            started = op.startswith("BAR")
            i += 1
            continue
        out.append(op)
        if re.match(r"^EXIT\b", op):
            break
        br = re.match(r"^(@!?U?P\w+\s+)?BRA\s+(?:!?U?P\w+,\s*)?(?:`\()?\s*(0x[0-9a-f]+)", op)
        if br:
            target = where[int(br.group(2), 16)]
            if br.group(1) is None or (target > i and any(o.startswith("CALL") for _, o in prog[i + 1:target])):
                i = target
                continue
        i += 1
    return out


def opcode(ins: str) -> str:
    return re.sub(r"^@!?U?P\w+\s+", "", ins).split()[0].split(".")[0]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--list", metavar="ROW", help="print the main path of one row (e.g. 'unit fp32')")
    ap.add_argument("--budget", metavar="ROW=N", action="append", default=[],
                    help="fail when ROW's instructions per element exceed N (repeatable)")
    args = ap.parse_args(argv)
    budgets = {}
    for b in args.budget:
        row, _, n = b.rpartition("=")
        if row not in {r for r, _ in VARIANTS.values()}:
            ap.error(f"--budget: no row {row!r}")
        budgets[row] = float(n)
    nvcc, cuobjdump = find_tool("nvcc"), find_tool("cuobjdump")
    if nvcc is None or cuobjdump is None:
        missing = "nvcc" if nvcc is None else "cuobjdump"
        if budgets:
            print(f"sass_element: {missing} not found; nothing checked")
            return 0
        sys.exit(f"sass_element: {missing} not found (PATH, $CUDA_HOME/bin, triton's backends/nvidia/bin)")
    with tempfile.TemporaryDirectory() as tmp:
        src, cubin = pathlib.Path(tmp) / "elem.cu", pathlib.Path(tmp) / "elem.cubin"
        src.write_text(KERNEL)
        # the extension's device flags (setup.py NVCC_FLAGS)
        cmd = [nvcc, "-cubin", f"-arch={args.arch}", "-O3", "--fmad=false", "-std=c++20", "-I", str(ROOT / "csrc"),
               str(src), "-o", str(cubin)]
        subprocess.run(cmd, check=True)
        sass = subprocess.run([cuobjdump, "-sass", str(cubin)], check=True, capture_output=True, text=True).stdout
    ver = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
    rows = {}
    for fn in re.split(r"\n\s*Function : ", sass)[1:]:
        name = fn.split("\n")[0]
        hit = next((v for k, v in VARIANTS.items() if k in name), None)
        if hit is not None:
            rows[hit[0]] = (main_path(fn), hit[1])
    if args.list:
        for ins in rows[args.list][0]:
            print(ins)
        return 0
    print(f"# {ver} | {args.arch} | the 8-bit update's main path (module docstring)")
    print("| kernel | SASS instructions | per element | most frequent |")
    print("|---|---|---|---|")
    over = []
    for row, _ in VARIANTS.values():
        ins, per = rows[row]
        ops = collections.Counter(opcode(i) for i in ins)
        top = ", ".join(f"{k} {n}" for k, n in ops.most_common(6))
        print(f"| {row} | {len(ins)} | {len(ins) / per:.1f} | {top} |")
        if row in budgets and len(ins) / per > budgets[row]:
            over.append(f"{row}: {len(ins) / per:.1f} instructions per element, over the budget of {budgets[row]:g}")
    for o in over:
        print(f"sass_element: FAIL: {o}")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
