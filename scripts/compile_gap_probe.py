"""Where the compiled step's extra time goes on SPEC section 7's 1.26 B set (issue 10: the compiled
step within 5% of eager; verify.py measured 1.043-1.058x on the H200 and the H100).

On the CPU the two forms spend the same host time before their first launch (136 and 143 us on
the 201-tensor set at 1% scale, 2026-11-27), and after it the host runs ahead of a 9 ms device
step, so the difference should be device work.  One thing differs by design: the compiled step
splits each bucket into fused_step_multi calls of 32 tensors (`_tensors_per_call`, for compile
time) where the eager step makes calls of 64 (`_tensors_per_call_eager`), so the 8-bit fp32
step of this set makes 7 launches compiled and 4 eager.  This measures, AdamW8bit on fp32
parameters, taking turns in blocks of 4 steps (CUDA events around each call, median):

  eager, 64 per call     the default eager step
  eager, 32 per call     the compiled step's split, run eagerly
  compiled, 32 per call  torch.compile(opt.step, fullgraph=True), the default
  compiled, 64 per call  the same with the eager split

and, for each, what the device runs in one step (torch.profiler, one step a profile, median of
5): kernels, their summed time, and the span from the first kernel's start to the last one's
end, so launches, kernel time and the gaps between kernels are told apart; and each case's
first call, which for a compiled case is its compile (the second one's with Dynamo's and
Inductor's caches warm, so only a hint; `benchmarks/bench_compile.py --tensors-per-call K`
compiles in a fresh process: on the CPU with torch 2.13, calls of 32, 64 and 128 tensors in the
same 2.7-3.0 s, benchmarks/RESULTS.md).

    python scripts/compile_gap_probe.py [--steps 20] [--set llama-1.26b] [--dtype fp32]
    python scripts/compile_gap_probe.py --device cpu --scale 0.01 --steps 3   # a smoke run

About 60 s on an H100, most of it the two compiles.  On the CPU the times are the host's and the
device columns stay empty.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import adamw8  # noqa: E402
from bench_step import SETS, shapes, shp_scaled  # noqa: E402
from reduce_overhead_probe import make, one_step_ms  # noqa: E402  (this directory: sys.path[0])

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def device_work(fn, steps: int = 5) -> dict:
    """Median over `steps` single-step profiles: device events (kernels and copies) per step,
    their summed µs, and the µs from the first one's start to the last one's end."""
    from torch.profiler import ProfilerActivity, profile

    counts, sums, spans = [], [], []
    for _ in range(steps):
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        ks = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        if not ks:
            continue
        counts.append(len(ks))
        sums.append(sum(e.time_range.elapsed_us() for e in ks))
        spans.append(max(e.time_range.end for e in ks) - min(e.time_range.start for e in ks))
    med = statistics.median
    return {"kernels": med(counts), "kernel_us": med(sums), "span_us": med(spans)} if counts else {}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--set", default="llama-1.26b", choices=list(SETS))
    ap.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--scale", type=float, default=1.0, help="scale of every dimension (a smoke run: 0.01)")
    args = ap.parse_args(argv)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        print("compile_gap_probe: no CUDA device (--device cpu for a smoke run)", file=sys.stderr)
        return 2
    cfg = SETS[args.set]
    sh = shapes(cfg) if args.scale == 1.0 else shp_scaled(cfg, args.scale)
    ps = make(sh, DTYPES[args.dtype], args.device)
    opt = adamw8.AdamW8bit(ps, lr=1e-3)
    opt.step()
    compiled = torch.compile(opt.step, fullgraph=True)

    def variant(kind: str, k: int):
        def run():
            if kind == "eager":
                opt._tensors_per_call_eager = k
                opt.step()
            else:
                opt._tensors_per_call = k
                compiled()
        return run

    cases = {
        "eager, 64 per call": variant("eager", 64),
        "eager, 32 per call": variant("eager", 32),
        "compiled, 32 per call": variant("compiled", 32),
        "compiled, 64 per call": variant("compiled", 64),
    }
    t0 = time.perf_counter()
    first_s = {}  # each case's first call: for the compiled ones, their compile (one graph each)
    for name, fn in cases.items():
        t1 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        first_s[name] = time.perf_counter() - t1
        fn()  # a warm-up
    if cuda:
        torch.cuda.synchronize()
    compile_s = time.perf_counter() - t0
    dev = {name: [] for name in cases}
    host = {name: [] for name in cases}
    # taking turns in blocks, so drift hits every case alike: a block's first call, unmeasured,
    # also takes the guard miss of switching between the two compiled graphs
    block = 4
    for _ in range(max(1, args.steps // block)):
        for name, fn in cases.items():
            fn()
            for _ in range(block):
                d, h = one_step_ms(fn, cuda)
                dev[name].append(d)
                host[name].append(h)
    work = {name: device_work(fn) if cuda else {} for name, fn in cases.items()}
    base = statistics.median(dev["eager, 64 per call"])
    name_ = torch.cuda.get_device_name() if cuda else "CPU"
    print(f"# {name_} | torch {torch.__version__} | {args.set}: {len(sh)} tensors, "
          f"AdamW8bit, {args.dtype} | median of {len(dev['eager, 64 per call'])} steps | compiles and warm-up {compile_s:.1f} s\n")
    print("| case | ms/step | vs eager (64) | host ms in the call | device events per step | their µs | "
          "span µs (first start to last end) | first call s |\n|---|---|---|---|---|---|---|---|")
    for name in cases:
        ms = statistics.median(dev[name])
        w = work[name]
        print(f"| {name} | {ms:.3f} | {ms / base:.3f}x | {statistics.median(host[name]):.3f} | "
              f"{w.get('kernels', 0):g} | {w.get('kernel_us', 0):.0f} | {w.get('span_us', 0):.0f} | {first_s[name]:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
