"""Profiler-driven tuning of the kernels' launch configs (adamw8/tuning.py).

    python -m adamw8.tune [--quick] [--out DIR] [--install]

For every state format, parameter dtype and size bucket it times each candidate launch config
with ``torch.profiler`` and keeps the fastest when it beats the default by more than the noise
margin:

* ``--device cpu`` (default): the build (base/avx2/avx512/avx512vbmi) and the grain (elements per parallel
  task); the time is the kernel's own, from the ``adamw8::cpu_step*[build grain=...]`` range each
  launch records.
* ``--device cuda``: blocks per SM of the persistent grid and tensors per launch; the time is the
  sum of the device kernels' durations from the profiler's device events, per call (the
  ``adamw8::cuda_step*[...]`` range names the config).  It writes, under ``--out`` (default ``adamw8-tune``):

* ``traces/``: one profiler trace per table key, for TensorBoard's profiler plugin
  (``pip install "adamw8[profile]"``; ``tensorboard --logdir DIR/traces``);
* ``summary.md``: the table of default and best times per key;
* ``tune.png``: time against grain per build, one panel per key (needs matplotlib);
* ``<device>.json``: the profile (keyed by device name, format/dtype/bucket), which
  ``--install`` also copies into ``adamw8/profiles/`` so the package loads it on this CPU.

``--quick`` (fp32 only, smaller tensors, fewer candidates) finishes in well under a minute on
two cores.
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
# a GPU's "ge4m" calls are a whole bucket of a large model (up to 64 tensors, ~10^8 elements)
CUDA_SIZES = {**SIZES, "ge4m": 1 << 26}
QUICK_CUDA_SIZES = {**SIZES, "ge4m": 1 << 24}
MARGIN = 0.03  # a candidate must beat the default by more than this to replace it
BLOCKS_PER_SM = (0, 1, 2, 3, 4)  # CUDA: 0 = as many as fit
TENSORS_PER_LAUNCH = (8, 16, 32, 64)
QUICK_BLOCKS_PER_SM = (0, 1, 2)
QUICK_TENSORS_PER_LAUNCH = (16, 64)
CUDA_TENSORS = 16  # a CUDA case splits its elements over this many tensors (tensors per launch matters)
_LABEL = re.compile(r"adamw8::cpu_step(?:8|32)\[(\w+) grain=(\d+)")
_CUDA_LABEL = re.compile(r"blocks_per_sm=(\d+) tensors_per_launch=(\d+)")


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


def _case(fmt: str, dtype: str, n: int, device: torch.device, ntensors: int = 1):
    """fused_step_multi arguments for one call on ``n`` elements of the given format and dtype,
    split over ``ntensors`` tensors."""
    from .ops import StepArgs

    g = torch.Generator().manual_seed(0)
    dt = tuning.TORCH_DTYPES[dtype]
    sizes = [n // ntensors + (1 if i < n % ntensors else 0) for i in range(ntensors)]
    sizes = [s for s in sizes if s > 0] or [n]
    ps = [torch.randn(s, generator=g).to(device=device, dtype=dt) for s in sizes]
    gs = [torch.randn(s, generator=g).to(device=device, dtype=dt) for s in sizes]
    hyper = torch.tensor([1e-3, 0.9, 0.999, 1e-8, 0.01], device=device)
    z = lambda count, dtype: torch.zeros(count, dtype=dtype, device=device)  # noqa: E731
    steps = [z((), torch.int64) for _ in sizes]
    common = dict(state3=[], absmax3=[], gnorm_vecs=[], block_wise=True, percentile=100, grad_scale=None,
                  found_inf=None, layout=[])
    if fmt == "8bit":
        q1 = torch.ops.adamw8.create_dynamic_map(True).to(device)
        q2 = torch.ops.adamw8.create_dynamic_map(False).to(device)
        return StepArgs(params=ps, grads=gs, state1=[z(s, torch.uint8) for s in sizes],
                        state2=[z(s, torch.uint8) for s in sizes], absmax1=[z(-(-s // 256), torch.float32)
                                                                           for s in sizes],
                        absmax2=[z(-(-s // 256), torch.float32) for s in sizes], qmap1=q1, qmap2=q2, steps=steps,
                        hyper=hyper, **common)
    return StepArgs(params=ps, grads=gs, state1=[z(s, torch.float32) for s in sizes],
                    state2=[z(s, torch.float32) for s in sizes], absmax1=[], absmax2=[], qmap1=None, qmap2=None,
                    steps=steps, hyper=hyper, **common)


def _run(args) -> None:
    torch.ops.adamw8.fused_step_multi(*args)


def _entry(device_type: str, cand) -> dict:
    if device_type == "cpu":
        return {"capability": cand[0], "grain": cand[1]}
    return {"blocks_per_sm": cand[0], "tensors_per_launch": cand[1]}


def _label(device_type: str, cand) -> str:
    return f"{cand[0]} grain={cand[1]}" if device_type == "cpu" else f"blocks_per_sm={cand[0]} " \
        f"tensors_per_launch={cand[1]}"


def tune_key(key: str, n: int, candidates, reps: int, trace_dir: Path, progress: Progress,
             device: torch.device) -> dict:
    """Time every candidate for one table key; returns {candidate: median microseconds per call}."""
    fmt, dtype, _ = key.split("/")
    dt = device.type
    args = _case(fmt, dtype, n, device, 1 if dt == "cpu" else CUDA_TENSORS)
    for cand in candidates:  # warm every config once, outside the trace
        tuning.set_table({key: _entry(dt, cand)}, base="current", device_type=dt)
        _run(args)
    if dt == "cuda":
        torch.cuda.synchronize()
    if dt == "cpu":
        handler = torch.profiler.tensorboard_trace_handler(str(trace_dir), worker_name=_slug(key))
        times: dict = {}
        # the candidates take turns, launch by launch: a burst of load from elsewhere on the machine
        # slows them all alike instead of one candidate's whole series
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], on_trace_ready=handler) as prof:
            for r in range(reps):
                for cand in candidates:
                    tuning.set_table({key: _entry(dt, cand)}, base="current", device_type=dt)
                    with torch.profiler.record_function(f"adamw8.tune {key} {_label(dt, cand)}"):
                        _run(args)
                    if r == reps - 1:
                        progress.update(f"{key} {_label(dt, cand)}")
        for e in prof.events():
            m = _LABEL.match(e.name)
            if m:
                times.setdefault((m.group(1), int(m.group(2))), []).append(e.cpu_time_total)
        return {c: statistics.median(times[c]) for c in candidates if c in times}
    # CUDA: one profile per candidate; the device kernels' time in it, per call
    out = {}
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    for cand in candidates:
        tuning.set_table({key: _entry(dt, cand)}, base="current", device_type=dt)
        handler = torch.profiler.tensorboard_trace_handler(
            str(trace_dir), worker_name=_slug(f"{key} bps{cand[0]} tpl{cand[1]}"))
        with torch.profiler.profile(activities=acts, on_trace_ready=handler) as prof:
            with torch.profiler.record_function(f"adamw8.tune {key} {_label(dt, cand)}"):
                for _ in range(reps):
                    _run(args)
            torch.cuda.synchronize()
        total = sum(e.self_device_time_total for e in prof.key_averages()
                    if e.device_type == torch.autograd.DeviceType.CUDA)
        out[cand] = total / reps
        progress.update(f"{key} {_label(dt, cand)}")
    return out


def _plot(results: dict, path: Path, device_type: str = "cpu") -> bool:
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
            ax.plot([g for g, _ in pts], [u for _, u in pts], marker="o",
                    label=cap if device_type == "cpu" else f"blocks/SM {cap or 'all'}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("grain (elements per task)" if device_type == "cpu" else "tensors per launch", fontsize=8)
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
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the current GPU)")
    ap.add_argument("--dtypes", nargs="+", default=None, choices=tuning.DTYPES)
    ap.add_argument("--formats", nargs="+", default=list(tuning.FORMATS), choices=tuning.FORMATS)
    ap.add_argument("--reps", type=int, default=None, help="timed launches per candidate")
    args = ap.parse_args(argv)

    try:
        device = torch.device(args.device)
    except RuntimeError:  # a name torch does not know: refused below, as one it knows but tuning does not
        device = None
    if device is None or device.type not in tuning.FIELDS:
        ap.error(f"--device must be cpu or cuda, got {args.device}")
    dt = device.type
    if dt == "cuda" and not torch.cuda.is_available():
        print("adamw8.tune: --device cuda needs a CUDA device; none is available here", file=sys.stderr)
        return 2
    if not tuning.available(dt):
        print(f"adamw8.tune: the compiled {dt.upper()} kernels are not loaded; build them with "
              "pip install --no-build-isolation -e . (README: Install)", file=sys.stderr)
        return 2
    if args.reps is not None and args.reps < 1:
        ap.error("--reps must be >= 1")

    dtypes = args.dtypes or (["fp32"] if args.quick else ["fp32", "bf16"])
    reps = args.reps or (3 if args.quick else 7)
    if dt == "cpu":
        sizes = QUICK_SIZES if args.quick else SIZES
        grains = QUICK_GRAINS if args.quick else GRAINS
        candidates = [(c, g) for c in tuning.capabilities() for g in grains]
        default = (tuning.auto_capability(), tuning.DEFAULT_GRAIN)
    else:
        if "fp64" in dtypes:
            ap.error("the CUDA kernels take fp32, bf16 and fp16 parameters")
        sizes = QUICK_CUDA_SIZES if args.quick else CUDA_SIZES
        bps = QUICK_BLOCKS_PER_SM if args.quick else BLOCKS_PER_SM
        tpl = QUICK_TENSORS_PER_LAUNCH if args.quick else TENSORS_PER_LAUNCH
        candidates = [(b, t) for b in bps for t in tpl]
        default = (tuning.FIELDS["cuda"]["blocks_per_sm"], tuning.FIELDS["cuda"]["tensors_per_launch"])
    if default not in candidates:
        candidates.append(default)
    keys = [f"{f}/{d}/{b}" for f in args.formats for d in dtypes for b in tuning.BUCKETS]

    out = Path(args.out)
    try:
        (out / "traces").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        ap.error(f"--out {args.out}: cannot write there ({e.strerror or e})")
    before = tuning.get_table(dt)
    tuning.reset(dt)  # measure against the defaults, not an installed profile
    device_name = tuning.device_name(device)
    print(f"# adamw8.tune on {device_name}, {torch.get_num_threads()} threads, torch {torch.__version__}: "
          f"{len(keys)} keys x {len(candidates)} configs x {reps} launches", file=sys.stderr)
    progress = Progress(len(keys) * len(candidates))
    results: dict = {}
    try:
        for key in keys:
            times = tune_key(key, sizes[key.split("/")[2]], candidates, reps, out / "traces", progress, device)
            base_us = times[default]
            best = min(times, key=times.get)
            if times[best] > base_us * (1 - MARGIN):
                best = default  # within the noise: keep the default
            results[key] = {"times": times, "best": best, "default_us": base_us, "us": times[best],
                            "n": sizes[key.split("/")[2]]}
    finally:
        tuning.set_table(before, device_type=dt)

    profile = {
        "schema": tuning.SCHEMA,
        "device": device_name,
        "device_type": dt,
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "quick": bool(args.quick),
        "command": "python -m adamw8.tune" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip(),
        "configs": {
            key: {**_entry(dt, r["best"]), "us": round(r["us"], 2), "default_us": round(r["default_us"], 2)}
            for key, r in results.items()
        },
    }
    tuning.validate_profile(profile, "the new profile")
    name = _slug(device_name) + ".json"
    text = json.dumps(profile, indent=1) + "\n"
    (out / name).write_text(text)

    lines = [f"# adamw8.tune: {device_name}", "",
             f"torch {torch.__version__}, {torch.get_num_threads()} threads, {reps} launches per config, kernel time "
             "from the profiler (" + ("median; default = auto build, grain 4096" if dt == "cpu" else
                                      f"device kernels per call, {CUDA_TENSORS} tensors; default = blocks_per_sm=0 "
                                      "tensors_per_launch=64") + ").", "",
             "| key | elements | default (us) | best config | best (us) | gain |", "|---|---|---|---|---|---|"]
    for key, r in results.items():
        gain = r["default_us"] / r["us"]
        lines.append(f"| {key} | {r['n']} | {r['default_us']:.1f} | {_label(dt, r['best'])} | "
                     f"{r['us']:.1f} | {gain:.2f}x |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    plotted = _plot(results, out / "tune.png", dt)
    print("\n".join(lines))
    print(f"\nwrote {out / name}, {out / 'summary.md'}" + (f", {out / 'tune.png'}" if plotted else "") +
          f" and traces in {out / 'traces'} (tensorboard --logdir {out / 'traces'})")
    if args.install:
        tuning.PROFILE_DIR.mkdir(exist_ok=True)
        dest = tuning.PROFILE_DIR / name
        dest.write_text(text)
        print(f"installed {dest}: adamw8 loads it on this " + ("CPU at import" if dt == "cpu" else
                                                                "GPU when an optimizer is made for it"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
