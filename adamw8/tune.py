"""Profiler-driven tuning of the kernels' launch configs (adamw8/tuning.py).

    python -m adamw8.tune [--quick] [--out DIR] [--install]

For every state format, parameter dtype and size bucket it times each candidate launch config
(the CPU build: base/avx2/avx512; the grain: elements per parallel task) with ``torch.profiler``,
taking the kernel's own time from the trace (the ``adamw8::cpu_step*[build grain=...]`` range
each launch records), and keeps the fastest when it beats the default by more than the noise
margin.  It writes, under ``--out`` (default ``adamw8-tune``):

* ``traces/``: one profiler trace per table key, for TensorBoard's profiler plugin
  (``pip install "adamw8[profile]"``; ``tensorboard --logdir DIR/traces``);
* ``summary.md``: the table of default and best times per key;
* ``tune.png``: time against grain per build, one panel per key (needs matplotlib);
* ``<device>.json``: the profile (keyed by device name, format/dtype/bucket), which
  ``--install`` also copies into ``adamw8/profiles/`` so the package loads it on this CPU.

``--quick`` (fp32 only, smaller tensors, fewer candidates) finishes in well under a minute on
two cores.  On CUDA the launch configs are compile-time constants of this build: the command
says so and stops.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import statistics
import sys
import time
from pathlib import Path

import torch

from . import tuning

GRAINS = (1024, 4096, 16384, 65536, 262144)
QUICK_GRAINS = (1024, 4096, 65536)
# a representative size per bucket (elements)
SIZES = {"lt16k": 8192, "lt256k": 131072, "lt4m": 1 << 21, "ge4m": 1 << 22}
QUICK_SIZES = {"lt16k": 8192, "lt256k": 65536, "lt4m": 1 << 19, "ge4m": 1 << 22}
MARGIN = 0.03  # a candidate must beat the default by more than this to replace it
_LABEL = re.compile(r"adamw8::cpu_step(?:8|32)\[(\w+) grain=(\d+)")


class Progress:
    """A one-line progress bar on stderr (a line per 10% when stderr is not a terminal)."""

    def __init__(self, total: int, stream=sys.stderr):
        self.total, self.done, self.stream = total, 0, stream
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.start = time.perf_counter()
        self._last_decile = -1

    def update(self, what: str) -> None:
        self.done += 1
        frac = self.done / max(self.total, 1)
        bar = "#" * int(30 * frac) + "-" * (30 - int(30 * frac))
        line = f"[{bar}] {self.done}/{self.total} {time.perf_counter() - self.start:5.1f}s {what}"
        if self.tty:
            self.stream.write("\r" + line[:120].ljust(120))
            if self.done == self.total:
                self.stream.write("\n")
        elif int(10 * frac) != self._last_decile:
            self._last_decile = int(10 * frac)
            self.stream.write(line + "\n")
        self.stream.flush()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def _case(fmt: str, dtype: str, n: int):
    """Op arguments for one fused_step on ``n`` elements of the given format and dtype."""
    g = torch.Generator().manual_seed(0)
    dt = tuning.TORCH_DTYPES[dtype]
    p = torch.randn(n, generator=g).to(dt)
    grad = torch.randn(n, generator=g).to(dt)
    hyper = torch.tensor([1e-3, 0.9, 0.999, 1e-8, 0.01])
    step = torch.zeros((), dtype=torch.int64)
    if fmt == "8bit":
        nb = (n + 255) // 256
        s1, s2 = torch.zeros(n, dtype=torch.uint8), torch.zeros(n, dtype=torch.uint8)
        a1, a2 = torch.zeros(nb), torch.zeros(nb)
        q1, q2 = torch.ops.adamw8.create_dynamic_map(True), torch.ops.adamw8.create_dynamic_map(False)
        return (p, grad, s1, s2, None, a1, a2, None, q1, q2, step, None, hyper, True, 100)
    s1, s2 = torch.zeros(n), torch.zeros(n)
    return (p, grad, s1, s2, None, None, None, None, None, None, step, None, hyper, True, 100)


def _run(args) -> None:
    torch.ops.adamw8.fused_step(*args)


def tune_key(key: str, n: int, candidates, reps: int, trace_dir: Path, progress: Progress) -> dict:
    """Time every candidate for one table key; returns {(cap, grain): median microseconds}."""
    fmt, dtype, _ = key.split("/")
    args = _case(fmt, dtype, n)
    for cap, grain in candidates:  # warm every build and grain once, outside the trace
        tuning.set_table({key: {"capability": cap, "grain": grain}}, base="current")
        _run(args)
    handler = torch.profiler.tensorboard_trace_handler(str(trace_dir), worker_name=_slug(key))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], on_trace_ready=handler) as prof:
        for cap, grain in candidates:
            tuning.set_table({key: {"capability": cap, "grain": grain}}, base="current")
            with torch.profiler.record_function(f"adamw8.tune {key} {cap} grain={grain}"):
                for _ in range(reps):
                    _run(args)
            progress.update(f"{key} {cap} grain={grain}")
    times: dict = {}
    for e in prof.events():
        m = _LABEL.match(e.name)
        if m:
            times.setdefault((m.group(1), int(m.group(2))), []).append(e.cpu_time_total)
    return {c: statistics.median(times[c]) for c in candidates if c in times}


def _plot(results: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("# matplotlib is not installed (pip install 'adamw8[profile]'): no plot", file=sys.stderr)
        return False
    keys = list(results)
    cols = 4
    rows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        by_cap: dict = {}
        for (cap, grain), us in sorted(results[key]["times"].items(), key=lambda kv: kv[0][1]):
            by_cap.setdefault(cap, []).append((grain, us))
        for cap, pts in by_cap.items():
            ax.plot([g for g, _ in pts], [u for _, u in pts], marker="o", label=cap)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("grain (elements per task)", fontsize=8)
        ax.set_ylabel("kernel time (us)", fontsize=8)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m adamw8.tune", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fp32 only, smaller tensors, fewer candidates (< 1 min)")
    ap.add_argument("--out", default="adamw8-tune", help="output folder (traces, summary, plot, profile)")
    ap.add_argument("--install", action="store_true", help="also copy the profile into adamw8/profiles/")
    ap.add_argument("--device", default="cpu", help="cpu (CUDA launch configs are not tunable in this build)")
    ap.add_argument("--dtypes", nargs="+", default=None, choices=tuning.DTYPES)
    ap.add_argument("--formats", nargs="+", default=list(tuning.FORMATS), choices=tuning.FORMATS)
    ap.add_argument("--reps", type=int, default=None, help="timed launches per candidate")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    if device.type != "cpu":
        print("adamw8.tune: the CUDA kernels' launch configs (threads per block, elements per lane, units per "
              "block, tensors per launch) are compile-time constants in this build (csrc/fused_step_kernels.cuh); "
              "only the CPU kernels can be tuned. Run with --device cpu.", file=sys.stderr)
        return 2
    if not tuning.available():
        print("adamw8.tune: the compiled CPU kernels are not loaded; build them with "
              "pip install --no-build-isolation -e .", file=sys.stderr)
        return 2
    if args.reps is not None and args.reps < 1:
        ap.error("--reps must be >= 1")

    dtypes = args.dtypes or (["fp32"] if args.quick else ["fp32", "bf16"])
    grains = QUICK_GRAINS if args.quick else GRAINS
    sizes = QUICK_SIZES if args.quick else SIZES
    reps = args.reps or (3 if args.quick else 7)
    caps = tuning.capabilities()
    candidates = [(c, g) for c in caps for g in grains]
    default = (tuning.auto_capability(), tuning.DEFAULT_GRAIN)
    if default not in candidates:
        candidates.append(default)
    keys = [f"{f}/{d}/{b}" for f in args.formats for d in dtypes for b in tuning.BUCKETS]

    out = Path(args.out)
    (out / "traces").mkdir(parents=True, exist_ok=True)
    before = tuning.get_table()
    tuning.reset()  # measure against the defaults, not an installed profile
    device_name = tuning.cpu_device_name()
    print(f"# adamw8.tune on {device_name}, {torch.get_num_threads()} threads, torch {torch.__version__}: "
          f"{len(keys)} keys x {len(candidates)} configs x {reps} launches", file=sys.stderr)
    progress = Progress(len(keys) * len(candidates))
    results: dict = {}
    try:
        for key in keys:
            times = tune_key(key, sizes[key.split("/")[2]], candidates, reps, out / "traces", progress)
            base_us = times[default]
            best = min(times, key=times.get)
            if times[best] > base_us * (1 - MARGIN):
                best = default  # within the noise: keep the default
            results[key] = {"times": times, "best": best, "default_us": base_us, "us": times[best],
                            "n": sizes[key.split("/")[2]]}
    finally:
        tuning.set_table(before)

    profile = {
        "schema": tuning.SCHEMA,
        "device": device_name,
        "device_type": "cpu",
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "quick": bool(args.quick),
        "command": "python -m adamw8.tune" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip(),
        "configs": {
            key: {"capability": r["best"][0], "grain": r["best"][1], "us": round(r["us"], 2),
                  "default_us": round(r["default_us"], 2)}
            for key, r in results.items()
        },
    }
    tuning.validate_profile(profile, "the new profile")
    name = _slug(device_name) + ".json"
    (out / name).write_text(json.dumps(profile, indent=1) + "\n")

    lines = [f"# adamw8.tune: {device_name}", "",
             f"torch {torch.__version__}, {torch.get_num_threads()} threads, {reps} launches per config, kernel time "
             "from the profiler (median); default = auto build, grain 4096.", "",
             "| key | elements | default (us) | best config | best (us) | gain |", "|---|---|---|---|---|---|"]
    for key, r in results.items():
        gain = r["default_us"] / r["us"]
        lines.append(f"| {key} | {r['n']} | {r['default_us']:.1f} | {r['best'][0]} grain={r['best'][1]} | "
                     f"{r['us']:.1f} | {gain:.2f}x |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    plotted = _plot(results, out / "tune.png")
    print("\n".join(lines))
    print(f"\nwrote {out / name}, {out / 'summary.md'}" + (f", {out / 'tune.png'}" if plotted else "") +
          f" and traces in {out / 'traces'} (tensorboard --logdir {out / 'traces'})")
    if args.install:
        tuning.PROFILE_DIR.mkdir(exist_ok=True)
        dest = tuning.PROFILE_DIR / name
        dest.write_text(json.dumps(profile, indent=1) + "\n")
        print(f"installed {dest}: adamw8 loads it at import on this CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
