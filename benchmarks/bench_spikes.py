"""Update spikes of 8-bit state on rarely-updated elements (the zero point, docs/design.md).

    python benchmarks/bench_spikes.py                 # the table of benchmarks/RESULTS.md
    python benchmarks/bench_spikes.py --steps 20      # shorter

An element whose second moment v is stored as exactly 0 while its m is not moves by
lr * m_hat / eps on the next step with a zero gradient: hundreds of times lr. Each scenario
reports the largest single-step change of any element, in units of lr (torch.optim.AdamW
moves an element by about 1x lr at most). tests/test_zero_point.py runs the same scenarios
with a bound of 3x lr.

Scenarios (lr 1e-3, no weight decay, fp32 params, CPU):
  repro       4096 zeros; one step with g[0] = 1, g[1] = 1e-4; one step with g = 0
  const-1e-N  4096 zeros; g[0] = 1, g[1] = 1e-N on every step (N = 3..7), ``--steps`` steps
  embedding   a 4096 x 256 parameter; 1 dense step, then 5% of the rows get a gradient per step
"""

from __future__ import annotations

import argparse
import sys

import torch

import adamw8

LR = 1e-3


def optimizers() -> dict:
    """name -> factory(params) for every optimizer available here (8-bit state where it has one)."""
    out = {
        "torch AdamW": lambda ps: torch.optim.AdamW(ps, lr=LR, weight_decay=0.0),
        "adamw8 AdamW32bit": lambda ps: adamw8.AdamW32bit(ps, lr=LR, weight_decay=0.0),
        "adamw8 AdamW8bit": lambda ps: adamw8.AdamW8bit(ps, lr=LR, weight_decay=0.0),
        "adamw8 AdamW8bit tensorwise": lambda ps: adamw8.AdamW8bit(ps, lr=LR, weight_decay=0.0, block_wise=False),
    }
    try:
        import bitsandbytes as bnb

        out["bnb AdamW8bit (CPU path)"] = lambda ps: bnb.optim.AdamW8bit(ps, lr=LR, weight_decay=0.0)
    except Exception:  # noqa: BLE001  (optional comparison)
        pass
    try:
        from torchao.optim import AdamW8bit as AoAdamW8bit

        out["torchao AdamW8bit"] = lambda ps: AoAdamW8bit(ps, lr=LR, weight_decay=0.0)
    except Exception:  # noqa: BLE001
        pass
    return out


def _run(make_opt, param: torch.Tensor, grads) -> float:
    """Largest single-step |change| of any element over the run, in units of lr."""
    p = torch.nn.Parameter(param.clone())
    opt = make_opt([p])
    worst = 0.0
    for g in grads:
        before = p.detach().clone()
        p.grad = g.clone()
        opt.step()
        worst = max(worst, (p.detach() - before).abs().max().item() / LR)
    return worst


def repro_grads():
    g1 = torch.zeros(4096)
    g1[0], g1[1] = 1.0, 1e-4
    return torch.zeros(4096), [g1, torch.zeros(4096)]


def constant_grads(ratio: float, steps: int):
    g = torch.zeros(4096)
    g[0], g[1] = 1.0, ratio
    return torch.zeros(4096), [g] * steps


def embedding_grads(steps: int, rows: int = 4096, dim: int = 256, dense: int = 1, frac: float = 0.05,
                    seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    param = torch.randn(rows, dim, generator=gen) * 0.02
    grads = []
    for i in range(steps):
        g = torch.randn(rows, dim, generator=gen) * 0.01
        if i >= dense:
            g[torch.rand(rows, generator=gen) >= frac] = 0.0
        grads.append(g)
    return param, grads


def scenarios(steps: int) -> dict:
    out = {"repro": repro_grads()}
    for n in range(3, 8):
        out[f"const-1e-{n}"] = constant_grads(10.0**-n, steps)
    out["embedding"] = embedding_grads(steps)
    return out


def measure(names=None, steps: int = 60) -> dict:
    """{(optimizer, scenario): worst single-step change / lr}."""
    opts = optimizers()
    res = {}
    for sname, (param, grads) in scenarios(steps).items():
        for oname, make in opts.items():
            if names is None or oname in names:
                res[(oname, sname)] = _run(make, param, grads)
    return res


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60)
    args = ap.parse_args(argv)
    res = measure(steps=args.steps)
    onames = list(dict.fromkeys(o for o, _ in res))
    snames = list(dict.fromkeys(s for _, s in res))
    print(f"torch {torch.__version__}, {args.steps} steps; largest single-step change of any element, x lr\n")
    print("| optimizer | " + " | ".join(snames) + " |")
    print("|---|" + "---|" * len(snames))
    for o in onames:
        print(f"| {o} | " + " | ".join(f"{res[(o, s)]:.2f}" for s in snames) + " |")
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
