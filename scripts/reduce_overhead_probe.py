"""What `mode="reduce-overhead"` costs over the eager step, and how much of it is the copy of
the gradients into the CUDA graph's static inputs (benchmarks/RESULTS.md, second H200 session:
1.37-1.54x eager on the 160 M set).

The compiled step takes the parameters and the state as static addresses (the optimizer marks
the state; Dynamo marks parameters), but not the gradients, which each backward may make anew,
so CUDA-graph trees copy every gradient into the graph's own buffer before each replay.  This
measures, on the 160 M set (111 tensors, AdamW8bit, fp32), median ms per step by CUDA events:

  eager                        opt.step()
  graphs, grads copied         torch.compile(opt.step, mode="reduce-overhead"), grads as they are
  graphs, grads static         the same gradients marked with torch._dynamo.mark_static_address
                               (guard=False) before compiling
  graphs, new grads each step  grads static at compile time, then new gradient tensors every step
                               (zero_grad(set_to_none=True) and a backward, imitated): the CUDA-graph
                               re-recordings this causes are counted
  compiled, no graphs          torch.compile(opt.step, fullgraph=True), the default mode

with the host's time in each call (Python, guards, launches; the event time includes it up to
the launches), and then what the device runs in a step of the eager and of the graphed form
(torch.profiler, 5 steps each): every kernel and copy by name, calls and device time per step.  On the H100 on
2026-11-27 the graphed step took 1.6x the eager one whether or not the gradients were static, so
the copies are not the cost; this names what is.

    python scripts/reduce_overhead_probe.py [--steps 30]

Needs a CUDA device.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import adamw8  # noqa: E402
from bench_step import SETS, shapes  # noqa: E402


HOST_MS = {}  # the last median_ms's host time: median ms of the fn() call itself


def one_step_ms(fn, cuda: bool = True) -> tuple[float, float]:
    """(ms of one fn() by CUDA events around it, host time until the launches included, or the
    host's time on the CPU; the host's ms inside fn(): Python, guards, launches)."""
    if not cuda:
        h0 = time.perf_counter()
        fn()
        host = (time.perf_counter() - h0) * 1e3
        return host, host
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    h0 = time.perf_counter()
    fn()
    host = (time.perf_counter() - h0) * 1e3
    e.record()
    torch.cuda.synchronize()
    return s.elapsed_time(e), host


def median_ms(fn, steps: int, before=None) -> float:
    """Median ms per step by CUDA events around fn() (one_step_ms); HOST_MS["last"]: the median
    time the host spends in fn()."""
    times, host = [], []
    for _ in range(steps):
        if before is not None:
            before()
        t, h = one_step_ms(fn)
        times.append(t)
        host.append(h)
    times.sort()
    host.sort()
    HOST_MS["last"] = host[len(host) // 2]
    return times[len(times) // 2]


def make(shapes_, dtype=torch.float32, device="cuda"):
    """Parameters of `shapes_` (randn * 0.02) with gradients (randn * 1e-3), seeded."""
    g = torch.Generator(device=device).manual_seed(0)
    ps = [torch.nn.Parameter((torch.randn(s, device=device, generator=g) * 0.02).to(dtype)) for s in shapes_]
    for p in ps:
        p.grad = (torch.randn(p.shape, device=device, generator=g) * 1e-3).to(dtype)
    return ps


def counters() -> dict:
    from torch._dynamo.utils import counters as c

    return {k: v for k, v in c["inductor"].items() if "cudagraph" in k}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("reduce_overhead_probe: needs a CUDA device", file=sys.stderr)
        return 2
    sh = shapes(SETS["gpt2-160m"])
    print(f"# {torch.cuda.get_device_name()} | torch {torch.__version__} | gpt2-160m: {len(sh)} tensors, "
          f"AdamW8bit, fp32 | median of {args.steps} steps")
    rows = []

    ps = make(sh)
    opt = adamw8.AdamW8bit(ps, lr=1e-3)
    opt.step()
    eager = median_ms(opt.step, args.steps)
    rows.append(("eager", eager, HOST_MS["last"], ""))
    work = {"eager": device_work(opt.step, 5)}

    torch._dynamo.reset()
    step = torch.compile(opt.step, mode="reduce-overhead", fullgraph=True)
    median_ms(step, 5)
    rows.append(("graphs, grads copied", median_ms(step, args.steps), HOST_MS["last"], ""))

    torch._dynamo.reset()
    for p in ps:
        torch._dynamo.mark_static_address(p.grad, guard=False)
    step = torch.compile(opt.step, mode="reduce-overhead", fullgraph=True)
    median_ms(step, 5)
    rows.append(("graphs, grads static", median_ms(step, args.steps), HOST_MS["last"], ""))
    work["graphs, grads static"] = device_work(step, 5)

    def new_grads():  # what zero_grad(set_to_none=True) and a backward leave: new tensors
        for p in ps:
            p.grad = None
        for p in ps:
            p.grad = torch.empty_like(p).normal_(0, 1e-3)

    c0 = counters()
    t = median_ms(step, args.steps, before=new_grads)
    c1 = counters()
    changed = {k: c1.get(k, 0) - c0.get(k, 0) for k in c1 if c1.get(k, 0) != c0.get(k, 0)}
    rows.append(("graphs, new grads each step", t, HOST_MS["last"], f"counters: {changed or 'unchanged'}"))

    torch._dynamo.reset()
    compiled = torch.compile(opt.step, fullgraph=True)
    median_ms(compiled, 5)
    rows.append(("compiled, no graphs", median_ms(compiled, args.steps), HOST_MS["last"],
                 f"cudagraph counters: {counters() or 'none'}"))

    print("\n| case | ms/step | vs eager | host ms in the call | note |\n|---|---|---|---|---|")
    for name, ms, host, note in rows:
        print(f"| {name} | {ms:.3f} | {ms / eager:.3f}x | {host:.3f} | {note} |")
    for name, rows_ in work.items():
        print(f"\n### device work per step, {name} (torch.profiler, 5 steps)\n")
        print("| kernel or copy | calls per step | µs per step |\n|---|---|---|")
        for kname, calls, us in rows_:
            print(f"| {kname[:90]} | {calls:g} | {us:.1f} |")
    return 0


def device_work(fn, steps: int):
    """(name, calls per step, device µs per step) of every device event of `steps` calls of fn,
    largest first."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
    rows = [(e.key, e.count / steps, e.self_device_time_total / steps) for e in prof.key_averages()
            if e.device_type == torch.autograd.DeviceType.CUDA]  # kernel time as adamw8.tune reads it
    return sorted(rows, key=lambda r: -r[2])
