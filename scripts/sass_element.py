"""SASS instructions of one 8-bit element update (benchmarks/RESULTS.md, "CUDA kernels").

    python scripts/sass_element.py [--arch sm_90]

Compiles one-element kernels built from the update kernels' own functions (adamw8_math.h,
fused_step_kernels.cuh: dequantize, adamw_element, quantize_8bit) with the extension's nvcc
flags, and counts the instructions of each kernel's main path (from its entry to its first
unconditional EXIT, slow-path calls excluded) in the SASS that cuobjdump prints:

* search: the search route (any sorted map), dividing;
* packed: the packed route, dividing;
* bounded: the packed route with div_rn for the normalisation and for sqrt(vh)/c2_sqrt and the
  sign fix as a clamp, what the update kernels run for the dynamic maps.

The reciprocals of the unit's absmax are kernel arguments here (the kernels compute them once
per unit and lane, about 3 instructions per element more).  Needs nvcc and cuobjdump (on PATH,
in $CUDA_HOME/bin, or the copy the triton wheel ships).
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
template <bool kPacked, bool kBounded>
__global__ void elem(const float* p_, const float* g_, const uint8_t* c1_, const uint8_t* c2_, float oa1, float oa2,
                     AdamScalars sc, float na1, float na2, float r1, float r2, float* pout, uint8_t* o1,
                     uint8_t* o2) {
  __shared__ Maps8 s;
  const int i = threadIdx.x;
  float p = p_[i], g = g_[i];
  float m = dequantize_value(s.q1, c1_[i], oa1), v = dequantize_value(s.q2, c2_[i], oa2), h = 0.0f;
  adamw_element<false, kBounded>(sc, g, p, m, v, h);
  o1[i] = quantize_8bit<kPacked, kBounded>(s, 1, m, na1, r1, true);
  o2[i] = quantize_8bit<kPacked, kBounded>(s, 2, v, na2, r2, false);
  pout[i] = p;
}
#define INST(P, B) template __global__ void elem<P, B>(const float*, const float*, const uint8_t*, \
    const uint8_t*, float, float, AdamScalars, float, float, float, float, float*, uint8_t*, uint8_t*);
INST(false, false)
INST(true, false)
INST(true, true)
"""

VARIANTS = {"elemILb0ELb0E": "search", "elemILb1ELb0E": "packed", "elemILb1ELb1E": "bounded"}


def find_tool(name: str) -> str:
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
    sys.exit(f"sass_element: {name} not found (PATH, $CUDA_HOME/bin, triton's backends/nvidia/bin)")


def main_path(fn_text: str) -> list[str]:
    """The instructions from the entry to the first unconditional EXIT, NOPs left out."""
    out = []
    for line in fn_text.split("\n"):
        if not re.search(r"/\*[0-9a-f]{4,}\*/", line):
            continue
        op = re.sub(r"^\s*/\*[0-9a-f]+\*/\s*", "", line).split(";")[0].strip()
        if not op.startswith("NOP"):
            out.append(op)
        if re.match(r"^EXIT\b", op):  # an EXIT with no predicate
            break
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="sm_90")
    args = ap.parse_args(argv)
    nvcc, cuobjdump = find_tool("nvcc"), find_tool("cuobjdump")
    with tempfile.TemporaryDirectory() as tmp:
        src, cubin = pathlib.Path(tmp) / "elem.cu", pathlib.Path(tmp) / "elem.cubin"
        src.write_text(KERNEL)
        # the extension's device flags (setup.py NVCC_FLAGS)
        cmd = [nvcc, "-cubin", f"-arch={args.arch}", "-O3", "--fmad=false", "-std=c++20", "-I", str(ROOT / "csrc"),
               str(src), "-o", str(cubin)]
        subprocess.run(cmd, check=True)
        sass = subprocess.run([cuobjdump, "-sass", str(cubin)], check=True, capture_output=True, text=True).stdout
    ver = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
    print(f"# {ver} | {args.arch} | one 8-bit element (update, two quantizations), main path")
    print("| variant | SASS instructions | most frequent |")
    print("|---|---|---|")
    for fn in re.split(r"\n\s*Function : ", sass)[1:]:
        name = fn.split("\n")[0]
        variant = next((v for k, v in VARIANTS.items() if k in name), None)
        if variant is None:
            continue
        ins = main_path(fn)
        ops = collections.Counter(re.sub(r"^@!?U?P\w+\s+", "", i).split()[0].split(".")[0] for i in ins)
        top = ", ".join(f"{k} {n}" for k, n in ops.most_common(6))
        print(f"| {variant} | {len(ins)} | {top} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
