"""Optimizer-step benchmark (docs/design.md, "Performance model"): adamw8 against torch's fused AdamW and bitsandbytes, same run.

    python benchmarks/bench_step.py                         # both sets, fp32 and bf16, on the GPU
    python benchmarks/bench_step.py --sets gpt2-160m --dtypes bf16 --steps 10
    python benchmarks/bench_step.py --device cpu --scale 0.001 --steps 3   # smoke test (CI)
    python benchmarks/bench_step.py --device cpu --interleave ...          # optimizers take turns

For every optimizer it prints the median step time over ``--steps`` timed steps after
``--warmup`` (CUDA events on the GPU), the ratio to torch.optim.AdamW(fused=True) from the same
run, and the fraction of the bandwidth floor: the step must read and write every byte of state
once (bytes/param: param r+w + grad r + state r+w), and the floor is those bytes over the
device-to-device copy bandwidth measured in the same run.  ``--scale`` shrinks every tensor
(for smoke tests); figures in benchmarks/RESULTS.md are at scale 1.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time

import torch

import adamw8

# Llama-like 1.26 B (hidden 2048, intermediate 5632, 22 layers, vocab 32000): 201 tensors.
# GPT-2-small-like 160 M (hidden 768, 3072, 12 layers, vocab 50257): 111 tensors.
SETS = {
    "llama-1.26b": dict(hidden=2048, inter=5632, layers=22, vocab=32000, kind="llama"),
    "gpt2-160m": dict(hidden=768, inter=3072, layers=12, vocab=50257, kind="gpt2"),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def shapes(cfg: dict) -> list[tuple[int, ...]]:
    h, f, v = cfg["hidden"], cfg["inter"], cfg["vocab"]
    if cfg["kind"] == "llama":  # q k v o, gate up down, 2 RMSNorms
        layer = [(h, h)] * 4 + [(f, h), (f, h), (h, f), (h,), (h,)]
        return [(v, h)] + layer * cfg["layers"] + [(h,), (v, h)]
    # ln1 w b, qkv w b, attn proj w, ln2 w b, fc w, mlp proj w
    layer = [(h,), (h,), (3 * h, h), (3 * h,), (h, h), (h,), (h,), (f, h), (h, f)]
    return [(v, h)] + layer * cfg["layers"] + [(h,), (v, h)]


def state_bytes(name: str, pbytes: int) -> int:
    """docs/design.md, "Performance model" bytes per parameter: param r+w + grad r + state r+w."""
    state = 2 if "8bit" in name else 8
    return 2 * pbytes + pbytes + 2 * state


def copy_bandwidth(device: torch.device, nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth in bytes/s, read + write counted."""
    if device.type != "cuda":
        nbytes = min(nbytes, 1 << 26)
    a = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1)
    b = torch.empty_like(a)
    times = timed(lambda: b.copy_(a), device, warmup=3, steps=10)
    return 2 * nbytes / statistics.median(times)


def timed(fn, device, warmup: int, steps: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(steps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            out.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return out


def optimizers(include_bnb: bool):
    opts = {
        "torch AdamW fused": lambda ps: torch.optim.AdamW(ps, lr=1e-4, fused=True),
        "adamw8 AdamW32bit": lambda ps: adamw8.AdamW32bit(ps, lr=1e-4),
        "adamw8 AdamW8bit": lambda ps: adamw8.AdamW8bit(ps, lr=1e-4),
        "adamw8 PagedAdamW8bit": lambda ps: adamw8.PagedAdamW8bit(ps, lr=1e-4),
    }
    if include_bnb:
        try:
            import bitsandbytes as bnb

            opts.update({
                "bnb AdamW32bit": lambda ps: bnb.optim.AdamW32bit(ps, lr=1e-4),
                "bnb AdamW8bit": lambda ps: bnb.optim.AdamW8bit(ps, lr=1e-4),
                "bnb PagedAdamW8bit": lambda ps: bnb.optim.PagedAdamW8bit(ps, lr=1e-4),
            })
        except ImportError:
            print("# bitsandbytes not installed: its rows are skipped", file=sys.stderr)
    return opts


def interleaved(opts: dict, params, device, warmup: int, steps: int) -> dict:
    """Every optimizer's step times with the optimizers taking turns step by step (all built
    first, on the same parameters), so a burst of load from elsewhere on a shared machine hits
    them alike.  An optimizer that fails to build or step gets its exception instead."""
    built, out = {}, {}
    for name, make in opts.items():
        try:
            built[name] = make(params)
        except Exception as e:  # a competitor that cannot run here is reported, not fatal
            out[name] = e
    for i in range(warmup + steps):
        for name, opt in list(built.items()):
            try:
                t = timed(opt.step, device, 0, 1)[0]
            except Exception as e:
                out[name] = e
                del built[name]
                continue
            if i >= warmup:
                out.setdefault(name, []).append(t)
    return out


def bench_set(set_name, dtype_name, device, args, bw, opts):
    cfg = SETS[set_name]
    shp = shp_scaled(cfg, args.scale)
    dtype = DTYPES[dtype_name]
    params = [torch.nn.Parameter(torch.randn(s, device=device, dtype=dtype) * 0.02) for s in shp]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    n = sum(p.numel() for p in params)
    pbytes = torch.empty((), dtype=dtype).element_size()
    rows = []
    times = interleaved(opts, params, device, args.warmup, args.steps) if args.interleave else {}
    for name, make in opts.items():
        try:
            if args.interleave:
                if isinstance(times[name], Exception):
                    raise times[name]
                ts = times[name]
            else:
                opt = make(params)
                ts = timed(opt.step, device, args.warmup, args.steps)
        except Exception as e:  # a competitor that cannot run here is reported, not fatal
            rows.append((name, None, f"failed: {type(e).__name__}: {str(e)[:80]}"))
            continue
        finally:
            opt = None
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        t = statistics.median(ts)
        floor = n * state_bytes(name, pbytes) / bw
        rows.append((name, t, floor / t))
    base = next((t for nm, t, _ in rows if nm == "torch AdamW fused" and t), None)
    # Interleaved, each round's steps ran back to back: the median of the per-round ratios to
    # torch's step cancels the drift of a shared machine that a ratio of medians keeps.
    torch_ts = times.get("torch AdamW fused") if args.interleave else None
    paired = {}
    if isinstance(torch_ts, list):
        for name, t, _ in rows:
            if t is not None and isinstance(times.get(name), list):
                paired[name] = statistics.median(a / b for a, b in zip(times[name], torch_ts))
    print(f"\n### {set_name}, {dtype_name} params: {len(params)} tensors, {n / 1e6:.1f} M parameters")
    extra = (" paired vs torch |", "---|") if paired else ("", "")
    print(f"| optimizer | ms/step | vs torch fused |{extra[0]} of floor |")
    print(f"|---|---|---|{extra[1]}---|")
    for name, t, frac in rows:
        if t is None:
            print(f"| {name} | {frac} | |{' |' if paired else ''} |")
            continue
        ratio = f"{t / base:.2f}x" if base else "n/a"
        pr = f" {paired[name]:.2f}x |" if name in paired else (" |" if paired else "")
        print(f"| {name} | {t * 1e3:.2f} | {ratio} |{pr} {100 * frac:.0f}% |")
    return [(name, t, frac, paired.get(name)) for name, t, frac in rows] if paired else rows


def shp_scaled(cfg, scale):
    """The set's shapes with every dimension scaled (at least 1); scale 1 is the real set."""
    return [tuple(max(1, int(round(d * scale))) for d in s) for s in shapes(cfg)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    ap.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--scale", type=float, default=1.0, help="shrink every dimension (smoke tests)")
    ap.add_argument("--no-bnb", action="store_true")
    ap.add_argument("--threads", type=int, nargs="+", default=None,
                    help="CPU: run every set at each of these thread counts (default: torch's)")
    ap.add_argument("--interleave", action="store_true",
                    help="the optimizers take turns step by step (shared machines: load bursts hit all alike)")
    ap.add_argument("--only", nargs="+", default=None,
                    help="run only the optimizers whose name contains one of these (torch fused always runs)")
    args = ap.parse_args(argv)
    if args.threads and (device_type := torch.device(args.device).type) != "cpu":
        ap.error(f"--threads is for the CPU, got --device {device_type}")
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    bw = copy_bandwidth(device)
    print(f"# device: {name} | torch {torch.__version__} | adamw8 {adamw8.__version__} | "
          f"copy bandwidth {bw / 1e12:.3f} TB/s (read+write) | command: {' '.join(sys.argv)}")
    opts = optimizers(not args.no_bnb)
    if args.only:
        opts = {k: v for k, v in opts.items() if k == "torch AdamW fused" or any(o in k for o in args.only)}
    results = {}
    for threads in args.threads or [None]:
        if threads is not None:
            torch.set_num_threads(threads)
            print(f"\n## {threads} thread{'s' if threads > 1 else ''}")
        for s in args.sets:
            for d in args.dtypes:
                results[(s, d) if threads is None else (s, d, threads)] = bench_set(s, d, device, args, bw, opts)
    return results


if __name__ == "__main__":
    main()
