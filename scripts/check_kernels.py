"""Checks the compiled CUDA kernels without a GPU (CI): nvcc with the build's own flags
(setup.py's NVCC_FLAGS and torch's), for sm_90.

  - no register spills in any kernel (ptxas -v);
  - every update kernel reads and writes full units with 128-bit accesses (ld/st.global...v4
    in the PTX; cuobjdump is not on the CI machines), and the 8-bit ones move codes with
    64-bit accesses (v2);
  - the staging update kernels (8-bit, bf16 and fp16 parameters, pass 0) copy a unit into
    shared memory with cp.async: 16-byte (parameters, gradients), 8-byte (codes) and 4-byte
    (absmax) copies, and wait for them;
  - the build options' other forms (OPTION_BUILDS: ADAMW8_STAGE=2, where the kernels of fp32
    parameters and the 32-bit ones but amsgrad stage too), for sm_90: the same rules (skipped
    with --archs none, as the other architectures are);
  - registers and static shared memory per kernel, recorded;
  - the other architectures torch's CUDA 13 wheels are built for (OTHER_ARCHS: sm_75 Turing
    up to sm_120), where a user's build may compile the kernels (TORCH_CUDA_ARCH_LIST, or the
    GPU at hand): each source compiles and no kernel spills.  An architecture the toolkit does
    not know is skipped with a note.

    python scripts/check_kernels.py [--out report.md] [--archs sm_75,sm_80 | --archs none]

Exits 1 when a rule fails, 0 (with a note) where there is no CUDA toolkit.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import os
import re
import runpy
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = [os.path.join(ROOT, "csrc", f) for f in ("fused_step_cuda.cu", "quantize_cuda.cu")]
# torch.cuda.get_arch_list() of torch's CUDA 13 wheels, less sm_90 (checked in full above)
OTHER_ARCHS = ("sm_75", "sm_80", "sm_86", "sm_100", "sm_120")
# build options (setup.py's KERNEL_OPTIONS) whose kernels differ, checked for sm_90: (define, staging level)
OPTION_BUILDS = (("-DADAMW8_STAGE=2", 2),)


def build_flags():
    setup = runpy.run_path(os.path.join(ROOT, "setup.py"), run_name="adamw8_setup")
    from torch.utils import cpp_extension

    if setup["CUDA_ROOT"] is None:
        return None, None
    nvcc = os.path.join(setup["CUDA_ROOT"], "bin", "nvcc")
    flags = list(cpp_extension.COMMON_NVCC_FLAGS) + setup["NVCC_FLAGS"] + ["-arch=sm_90", "-I" + os.path.join(ROOT, "csrc")]
    return nvcc, flags


def short(name: str) -> str:
    """A readable kernel name from its mangled one."""
    m = re.search(r"(fused_step_kernel|gnorm_kernel|tensor_reduce_kernel|finish_kernel|quantize_reduce_kernel|"
                  r"quantize_kernel|dequantize_kernel)(I.*?E)?E", name)
    if not m:
        return name
    base, targs = m.group(1), m.group(2) or ""
    dtype = "bf16" if "bfloat16" in targs else "fp16" if "half" in targs else "fp32" if targs.startswith("If") else ""
    bools = re.findall(r"Lb([01])E", targs)
    pas = re.findall(r"Li(\d)E", targs)
    if base == "fused_step_kernel":
        eight, ams = bools[0] == "1", bools[1] == "1"
        return f"update {dtype} {'8-bit' if eight else '32-bit'}{' ams' if ams else ''} pass {pas[0]}"
    if base == "quantize_kernel":
        return f"quantize pass {pas[0]}"
    if base == "tensor_reduce_kernel":
        return "tensor_reduce " + ("clip" if bools and bools[0] == "1" else "max")
    return f"{base.replace('_kernel', '')} {dtype}".strip()


def ptx_accesses(nvcc, flags, tmp, source):
    ptx = os.path.join(tmp, "k.ptx")
    subprocess.run([nvcc, *flags, "-ptx", source, "-o", ptx], check=True, capture_output=True, text=True)
    text = open(ptx).read()
    out = {}
    for body in re.split(r"\n\s*// \.globl\s+", text)[1:]:
        name = body.split()[0]
        c = collections.Counter()
        for m in re.finditer(r"\b(ld|st)\.global((?:\.[a-z0-9:_]+)*)", body):
            width = "v4" if ".v4" in m.group(2) else "v2" if ".v2" in m.group(2) else "scalar"
            c[f"{m.group(1)}.{width}"] += 1
        for m in re.finditer(r"\bcp\.async\.c[ag]\.shared\.global \[[^]]*\], \[[^]]*\], (\d+);", body):
            c[f"cp.async.{m.group(1)}"] += 1
        c["cp.async.wait"] = len(re.findall(r"\bcp\.async\.wait_group\b", body))
        c["instructions"] = sum(1 for line in body.splitlines() if re.match(r"\s+[a-z@]", line))
        out[name] = c
    return out


def ptxas_report(nvcc, flags, tmp, source):
    res = subprocess.run([nvcc, *flags, "-cubin", "-Xptxas", "-v", source, "-o", os.path.join(tmp, "k.cubin")],
                         check=True, capture_output=True, text=True)
    return parse_ptxas(res.stderr)


def with_arch(flags, arch):
    return [f for f in flags if not f.startswith("-arch=")] + [f"-arch={arch}"]


def other_archs(nvcc, flags, archs, tmp):
    """Compiles every source for each of `archs` (two at a time); returns (problems, notes).  A
    source that does not compile, or a kernel that spills, is a problem."""
    known = subprocess.run([nvcc, "--list-gpu-arch"], capture_output=True, text=True).stdout.split()
    problems, notes, jobs = [], [], []
    for arch in archs:
        if known and arch.replace("sm_", "compute_") not in known:
            notes.append(f"{arch}: not known to this nvcc, skipped")
            continue
        for source in SOURCES:
            jobs.append((arch, source))

    def run(job):
        arch, source = job
        out = os.path.join(tmp, f"{arch}-{os.path.basename(source)}.cubin")
        return job, subprocess.run([nvcc, *with_arch(flags, arch), "-cubin", "-Xptxas", "-v", source, "-o", out],
                                   capture_output=True, text=True)

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        for (arch, source), res in pool.map(run, jobs):
            name = os.path.basename(source)
            if res.returncode != 0:
                err = next((line for line in res.stderr.splitlines() if "error" in line), res.stderr.strip()[-300:])
                problems.append(f"{arch} {name}: does not compile: {err}")
                continue
            report = parse_ptxas(res.stderr)
            problems += [f"{arch} {p}" for p in check({}, report)]
            notes.append(f"{arch} {name}: {len(report)} kernels, at most "
                         f"{max((r.get('regs', 0) for r in report.values()), default=0)} registers")
    return problems, notes


def parse_ptxas(text: str) -> dict:
    """Registers, shared memory, stack and spills per entry function from ptxas -v's report."""
    # ptxas prints, per entry function: "Compiling entry function 'K'", "Function properties for
    # K" and its stack and spill line, "Used N registers"; then the same properties block for
    # each non-inlined function it calls (e.g. __internal_accurate_pow), whose line must not
    # be taken for the kernel's: a stack and spill line belongs to the function named just
    # before it.
    out, cur, props = {}, None, None
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '(\S+)'", line)
        if m:
            cur = m.group(1)
            out[cur] = {}
            continue
        m = re.search(r"Function properties for (\S+)", line)
        if m:
            props = m.group(1)
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and props in out:
            out[props].update(stack=int(m.group(1)), spill_st=int(m.group(2)), spill_ld=int(m.group(3)))
            continue
        m = re.search(r"Used (\d+) registers", line)
        if m and cur is not None:
            out[cur]["regs"] = int(m.group(1))
            sm = re.search(r"(\d+) bytes smem", line)
            out[cur]["smem"] = int(sm.group(1)) if sm else 0
    for name, r in out.items():
        if "stack" not in r:
            raise SystemExit(f"check_kernels: no stack and spill line for {name} in ptxas's report")
    return out


def check(ptx, sass, stage=1):
    """The rules' failures; `stage`: the build's ADAMW8_STAGE, which kernels stage."""
    problems = []
    for name, r in sass.items():
        if r.get("spill_st", 0) or r.get("spill_ld", 0):
            problems.append(f"{short(name)}: {r['spill_st']} bytes of spill stores, {r['spill_ld']} of spill loads")
    for name, c in ptx.items():
        s = short(name)
        if s.startswith("quantize pass") and c["ld.v4"] == 0:
            problems.append(f"{s}: no 128-bit global loads")
        if not s.startswith("update"):
            continue
        if c["ld.v4"] == 0:
            problems.append(f"{s}: no 128-bit global loads")
        writes = not s.endswith("pass 1")
        if writes and c["st.v4"] == 0:
            problems.append(f"{s}: no 128-bit global stores")
        if "8-bit" in s and (c["ld.v2"] < 2 or (writes and c["st.v2"] < 2)):
            problems.append(f"{s}: codes are not moved with 64-bit accesses")
        sixteen = "bf16" in s or "fp16" in s
        staging = s.endswith("pass 0") and ("8-bit" in s and sixteen if stage == 1 else "8-bit" in s or "ams" not in s)
        sizes = (16, 8, 4) if "8-bit" in s else (16,)
        if staging and (any(c[f"cp.async.{b}"] == 0 for b in sizes) or c["cp.async.wait"] == 0):
            problems.append(f"{s}: the next unit is not staged by cp.async of {sizes} bytes with a wait")
    return problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="also write the report (markdown) here")
    ap.add_argument("--archs", default=",".join(OTHER_ARCHS),
                    help="the other architectures to compile for, comma-separated, or 'none' "
                         "(default: %(default)s)")
    args = ap.parse_args(argv)
    archs = [] if args.archs == "none" else [a.strip() for a in args.archs.split(",") if a.strip()]
    nvcc, flags = build_flags()
    if nvcc is None:
        print("check_kernels: no CUDA toolkit found; nothing checked")
        return 0
    ptx, sass = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for source in SOURCES:
            ptx.update(ptx_accesses(nvcc, flags, tmp, source))
            sass.update(ptxas_report(nvcc, flags, tmp, source))
        arch_problems, arch_notes = other_archs(nvcc, flags, archs, tmp)
        if archs:
            for define, level in OPTION_BUILDS:
                o_ptx = ptx_accesses(nvcc, flags + [define], tmp, SOURCES[0])
                o_sass = ptxas_report(nvcc, flags + [define], tmp, SOURCES[0])
                arch_problems += [f"{define}: {p}" for p in check(o_ptx, o_sass, stage=level)]
                arch_notes.append(f"{define} (sm_90): {len(o_sass)} kernels, at most "
                                  f"{max((r.get('regs', 0) for r in o_sass.values()), default=0)} registers")
    lines = ["| kernel | registers | smem B | stack B | spills B | ld v4 | st v4 | ld v2 | st v2 | scalar ld/st | "
             "cp.async 16/8/4 | PTX instr |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in sorted(ptx, key=short):
        c, r = ptx[name], sass.get(name, {})
        lines.append(f"| {short(name)} | {r.get('regs', '?')} | {r.get('smem', 0)} | {r.get('stack', 0)} | "
                     f"{r.get('spill_st', 0) + r.get('spill_ld', 0)} | {c['ld.v4']} | {c['st.v4']} | {c['ld.v2']} | "
                     f"{c['st.v2']} | {c['ld.scalar']}/{c['st.scalar']} | "
                     f"{c['cp.async.16']}/{c['cp.async.8']}/{c['cp.async.4']} | {c['instructions']} |")
    report = "\n".join(lines)
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report + "\n")
    for note in arch_notes:
        print("check_kernels:", note)
    problems = check(ptx, sass) + arch_problems
    for p in problems:
        print("check_kernels: FAIL:", p, file=sys.stderr)
    print(f"check_kernels: {len(ptx)} kernels, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
