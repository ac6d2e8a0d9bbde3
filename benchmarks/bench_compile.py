"""Compile time of ``torch.compile(opt.step)`` on the benchmark tensor sets, against torch's
compiled AdamW in the same run (target: adamw8 <= 0.1x torch, after Inductor's start-up).

    python benchmarks/bench_compile.py                       # the GPU when present
    python benchmarks/bench_compile.py --device cpu --scale 0.01

Each optimizer runs in its own process: first the start-up, a trivial ``torch.compile`` with
a cold cache (Inductor's one-time cost of a process), then the first call of the compiled step (Dynamo tracing and
Inductor codegen, FX graph cache off, fresh Dynamo), the steady-state compiled step, and the
eager step of a fresh optimizer on the same tensors, as a compiled/eager ratio.  Tensor sizes
do not change the graph, so ``--scale`` only saves memory.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import statistics
import subprocess
import sys
import time

import torch

import adamw8

_spec = importlib.util.spec_from_file_location("bench_step", pathlib.Path(__file__).with_name("bench_step.py"))
bench_step = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_step)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def startup(device) -> float:
    """A trivial compile with a cold cache: Inductor's start-up."""
    torch._dynamo.reset()
    x = torch.randn(8, device=device)
    with torch._inductor.config.patch(fx_graph_cache=False):
        t0 = time.perf_counter()
        torch.compile(lambda t: t * 2 + 1)(x)
        sync(device)
    return time.perf_counter() - t0


def timed(step, device, steps):
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(name, make, shapes, device, dtype, steps):
    """(first compiled call s, compiled step s, eager step s)."""
    torch._dynamo.reset()
    params = [torch.nn.Parameter(torch.randn(s, device=device, dtype=dtype)) for s in shapes]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = make(params)
    step = torch.compile(opt.step, fullgraph=name.startswith("adamw8"))
    with torch._inductor.config.patch(fx_graph_cache=False):
        sync(device)
        t0 = time.perf_counter()
        step()
        sync(device)
        first = time.perf_counter() - t0
    eager_opt = make(params)
    eager_opt.step()
    compiled, eager = [], []
    for _ in range(steps):  # interleaved, so a noisy machine slows both alike
        compiled.append(timed(step, device, 1))
        eager.append(timed(eager_opt.step, device, 1))
    return first, statistics.median(compiled), statistics.median(eager)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", default="llama-1.26b", choices=list(bench_step.SETS))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--tensors-per-call", type=int, default=None,
                    help="override adamw8's tensors per fused_step_multi call")
    ap.add_argument("--only", nargs="+", default=None, help="optimizer names to run (default: all)")
    ap.add_argument("--row", action="store_true", help=argparse.SUPPRESS)  # one optimizer, JSON out
    args = ap.parse_args(argv)
    if args.tensors_per_call:
        adamw8.optim.AdamWBase._tensors_per_call = args.tensors_per_call
    device = torch.device(args.device)
    shapes = bench_step.shp_scaled(bench_step.SETS[args.set], args.scale)
    cap = device.type == "cuda"
    opts = {
        "adamw8 AdamW8bit": lambda ps: adamw8.AdamW8bit(ps, lr=1e-4),
        "adamw8 AdamW32bit": lambda ps: adamw8.AdamW32bit(ps, lr=1e-4),
        # a tensor lr needs capturable=True, which needs CUDA
        "torch AdamW foreach": lambda ps: torch.optim.AdamW(ps, lr=torch.tensor(1e-4) if cap else 1e-4,
                                                           foreach=True, capturable=cap),
    }
    name = torch.cuda.get_device_name(device) if cap else "cpu"
    names = [n for n in opts if not args.only or n in args.only]
    if len(names) > 1:  # one process per optimizer: each compile starts from the same clean process
        rows = {}
        for n in names:
            cmd = [sys.executable, __file__, "--set", args.set, "--device", args.device, "--scale", str(args.scale),
                   "--steps", str(args.steps), "--only", n, "--row"]
            if args.tensors_per_call:
                cmd += ["--tensors-per-call", str(args.tensors_per_call)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rows[n] = json.loads(out.strip().splitlines()[-1])
    else:
        st = startup(device)
        rows = {n: (*measure(n, opts[n], shapes, device, torch.float32, args.steps), st) for n in names}
        if args.row:
            print(json.dumps(rows[names[0]]))
            return rows
    print(f"# device: {name} | torch {torch.__version__} | set {args.set} ({len(shapes)} tensors, scale "
          f"{args.scale}) | one process per optimizer | command: {' '.join(sys.argv)}")
    print("| optimizer | Inductor start-up s | compile s (first call, after the start-up) | vs torch compiled | "
          "compiled step ms | eager step ms | compiled / eager |")
    print("|---|---|---|---|---|---|---|")
    ref = rows.get("torch AdamW foreach", (None,))[0]
    for opt_name, (first, compiled, eager, st) in rows.items():
        vs = f"{first / ref:.2f}x" if ref else "-"
        print(f"| {opt_name} | {st:.1f} | {first:.1f} | {vs} | {compiled * 1e3:.2f} | {eager * 1e3:.2f} | "
              f"{compiled / eager:.2f} |", flush=True)
    return rows


if __name__ == "__main__":
    main()
