"""Paged optimizer state on a GPU (adamw8/paging.py): the resident paged step against the unpaged
one, and page-out / page-in against the host link's copy bandwidth, same run.

    python benchmarks/bench_paging.py                      # 8-bit and 32-bit, ~200 M parameters
    python benchmarks/bench_paging.py --tensors 4 --steps 5   # smaller and quicker

For each state format it prints: the median step time (CUDA events) of AdamW*bit and of
PagedAdamW*bit with its state resident (target: paged <= 1.1x unpaged); the time of
``page_out()`` and of ``page_in()`` (each synchronised) for the paged bytes, as bandwidth, beside
pinned host<->device copy bandwidth of the same size measured in the same run; and how much
free device memory (``torch.cuda.mem_get_info``) page-out returned.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from bench_step import timed  # benchmarks/ is on sys.path when a script there runs

import adamw8


def cuda_time(fn, steps: int, warmup: int = 2) -> float:
    """Median seconds per call (CUDA events: bench_step.py's timer)."""
    return statistics.median(timed(fn, torch.device("cuda"), warmup, steps))


def wall(fn) -> float:
    torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t


def copy_bandwidth(nbytes: int) -> tuple[float, float]:
    """Pinned host -> device and device -> host copy bandwidth (bytes/s)."""
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    dev = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    h2d = min(wall(lambda: dev.copy_(host, non_blocking=True)) for _ in range(3))
    d2h = min(wall(lambda: host.copy_(dev, non_blocking=True)) for _ in range(3))
    return nbytes / h2d, nbytes / d2h


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tensors", type=int, default=12, help="4096 x 4096 fp32 parameters (16.8 M each)")
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_paging: needs a CUDA device (paging is a no-op on the CPU)", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(4096, 4096, device="cuda") * 0.02) for _ in range(args.tensors)]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    n = sum(p.numel() for p in params)
    print(f"# {torch.cuda.get_device_name()} | torch {torch.__version__} | {n / 1e6:.0f} M parameters in "
          f"{len(params)} tensors | command: {' '.join(sys.argv)}")
    rows = []
    for unpaged_cls, paged_cls in ((adamw8.AdamW8bit, adamw8.PagedAdamW8bit),
                                   (adamw8.AdamW32bit, adamw8.PagedAdamW32bit)):
        opt = unpaged_cls(params, lr=1e-4)
        t_unpaged = cuda_time(opt.step, args.steps)
        del opt
        torch.cuda.empty_cache()
        opt = paged_cls(params, lr=1e-4)
        t_paged = cuda_time(opt.step, args.steps)
        nbytes = opt.paged_bytes()
        free0 = torch.cuda.mem_get_info()[0]
        t_out = wall(opt.page_out)
        freed = torch.cuda.mem_get_info()[0] - free0
        t_in = wall(opt.page_in)
        t_after = cuda_time(opt.step, args.steps)
        h2d, d2h = copy_bandwidth(nbytes)
        rows.append((paged_cls.__name__, t_unpaged, t_paged, t_after, nbytes, t_out, t_in, d2h, h2d, freed))
        del opt
        torch.cuda.empty_cache()
    print("\n| optimizer | unpaged step (ms) | paged, resident (ms) | ratio | paged bytes (GB) | page-out (ms, GB/s) "
          "| pinned D2H (GB/s) | page-in (ms, GB/s) | pinned H2D (GB/s) | freed by page-out (GB) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, tu, tp, ta, nb, to, ti, d2h, h2d, freed in rows:
        print(f"| {name} | {tu * 1e3:.2f} | {tp * 1e3:.2f} (after page-in {ta * 1e3:.2f}) | {tp / tu:.3f} | "
              f"{nb / 1e9:.2f} | {to * 1e3:.1f}, {nb / to / 1e9:.1f} | {d2h / 1e9:.1f} | {ti * 1e3:.1f}, "
              f"{nb / ti / 1e9:.1f} | {h2d / 1e9:.1f} | {freed / 1e9:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
