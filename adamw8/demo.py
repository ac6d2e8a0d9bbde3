"""The main job in one command: train a tiny transformer LM with AdamW32bit and AdamW8bit side by side.

    python -m adamw8.demo                 # CPU: about a minute; the GPU when present
    python -m adamw8.demo --steps 50 --compile

The model is a character-level causal transformer trained on text the demo
generates itself (arithmetic sentences such as ``"31+4=35."``), so it needs no
download.  Both runs start from the same weights and see the same batches;
the demo prints the loss curve, the optimizer-state bytes per parameter and
the median optimizer-step time of each.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import adamw8

ALPHABET = "0123456789+=. "


def make_corpus(n_sentences: int, seed: int) -> torch.Tensor:
    """Sentences ``a+b=c.`` with a, b < 100, as a 1-D tensor of character ids."""
    g = torch.Generator().manual_seed(seed)
    ab = torch.randint(0, 100, (n_sentences, 2), generator=g).tolist()
    text = " ".join(f"{a}+{b}={a + b}." for a, b in ab)
    return torch.tensor([ALPHABET.index(c) for c in text], dtype=torch.long)


class TinyLM(nn.Module):
    def __init__(self, vocab: int, d: int = 128, layers: int = 2, heads: int = 4, ctx: int = 64):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.zeros(ctx, d))
        block = nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(ctx), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        h = self.tok(x) + self.pos[:t]
        h = self.blocks(h, mask=self.mask[:t, :t], is_causal=True)
        return self.head(self.norm(h))


def state_bytes_per_param(opt: torch.optim.Optimizer) -> float:
    """Bytes of optimizer state per parameter (maps shared by all tensors counted once)."""
    seen, nbytes = set(), 0
    for st in opt.state.values():
        for v in st.values():
            if isinstance(v, torch.Tensor) and id(v) not in seen:
                seen.add(id(v))
                nbytes += v.numel() * v.element_size()
    nparams = sum(p.numel() for g in opt.param_groups for p in g["params"])
    return nbytes / nparams


def train(name, opt_cls, model, data, args, device):
    opt = opt_cls(model.parameters(), lr=args.lr, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)
    step = torch.compile(opt.step, fullgraph=True) if args.compile else opt.step
    g = torch.Generator().manual_seed(args.seed + 1)
    losses, times = [], []
    for it in range(args.steps):
        idx = torch.randint(0, data.numel() - args.ctx - 1, (args.batch,), generator=g)
        x = torch.stack([data[i : i + args.ctx] for i in idx.tolist()]).to(device)
        y = torch.stack([data[i + 1 : i + args.ctx + 1] for i in idx.tolist()]).to(device)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=False) if opt.state else opt.zero_grad()
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        sched.step()
        losses.append(loss.item())
        if (it + 1) % max(1, args.steps // 5) == 0 or it == 0:
            print(f"  [{name}] step {it + 1:4d}/{args.steps}  loss {losses[-1]:.4f}", flush=True)
    warm = times[min(3, len(times) - 1):]  # the first steps create state / compile
    return losses, statistics.median(warm), state_bytes_per_param(opt)


def _int_in(low: int, high: int):
    """argparse type: an int in [low, high], a usage error otherwise."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not low <= v <= high:
            raise argparse.ArgumentTypeError(f"expected an integer in [{low}, {high}], got {v}")
        return v
    return parse


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < v < math.inf:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {v}")
    return v


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=_int_in(1, 10**7), default=300)
    ap.add_argument("--batch", type=_int_in(1, 65536), default=32)
    ap.add_argument("--ctx", type=_int_in(1, 4096), default=64, help="characters per sequence")
    ap.add_argument("--lr", type=_positive_float, default=3e-3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--compile", action="store_true", help="torch.compile(opt.step, fullgraph=True)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        device = torch.device(args.device)
    except RuntimeError:
        ap.error(f"--device: expected a torch device such as cpu or cuda, got {args.device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is available here")
    data = make_corpus(20000, args.seed)
    torch.manual_seed(args.seed)
    init = TinyLM(len(ALPHABET), ctx=args.ctx)
    nparams = sum(p.numel() for p in init.parameters())
    print(f"adamw8 demo: {nparams:,}-parameter transformer LM, {args.steps} steps, device {device}, "
          f"torch {torch.__version__}, compile={args.compile}")
    results = {}
    for name, cls in (("AdamW32bit", adamw8.AdamW32bit), ("AdamW8bit", adamw8.AdamW8bit)):
        model = TinyLM(len(ALPHABET), ctx=args.ctx).to(device)
        model.load_state_dict(init.state_dict())
        results[name] = train(name, cls, model, data, args, device)
    print()
    print(f"{'optimizer':<12} {'first loss':>10} {'final loss':>10} {'state B/param':>14} {'step ms (median)':>17}")
    for name, (losses, t, bpp) in results.items():
        tail = statistics.mean(losses[-10:])
        print(f"{name:<12} {losses[0]:>10.4f} {tail:>10.4f} {bpp:>14.3f} {t * 1e3:>17.3f}")
    l32 = statistics.mean(results["AdamW32bit"][0][-10:])
    l8 = statistics.mean(results["AdamW8bit"][0][-10:])
    print(f"\nfinal loss (mean of last 10 steps): 8-bit {l8:.4f} vs 32-bit {l32:.4f} "
          f"(ratio {l8 / l32:.3f}); uniform guess would be {math.log(len(ALPHABET)):.4f}")
    return results


if __name__ == "__main__":
    main()
