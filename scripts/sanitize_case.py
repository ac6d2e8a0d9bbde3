"""One small multi-tensor call of each CUDA kernel family, for compute-sanitizer
(scripts/gpu_check.sh runs it under memcheck and racecheck):

    compute-sanitizer --tool memcheck python scripts/sanitize_case.py

8-bit blockwise with amsgrad over odd sizes, a transposed and an unaligned parameter; 8-bit
block_wise=False with percentile clipping; 32-bit; 8-bit of bf16 and fp16 parameters (with
amsgrad) with a tensor of over 4000 units besides, so warps take two units and stage the second
(cp.async into shared memory, sm_80 on; an H100 holds 132 SMs x 24 warps of these kernels);
quantize/dequantize.  Exits non-zero if the results differ from the CPU kernels'."""

from __future__ import annotations

import sys

import torch

import adamw8  # noqa: F401


def make(dtype, eight, ams, block_wise, clip, device, big=False):
    torch.manual_seed(0)
    sizes = [1, 255, 257, 4097, 3 * 256] + ([256 * 4500 + 5] if big else [])
    params = [torch.randn(n).to(dtype) for n in sizes] + [torch.randn(40, 33).to(dtype).t(),
                                                          torch.randn(1001).to(dtype)[1:]]
    grads = [torch.randn(p.shape).to(dtype) for p in params]
    sd = torch.uint8 if eight else torch.float32

    def nb(n):
        return (n + 255) // 256 if block_wise else 1

    lists = dict(
        state1=[torch.zeros(p.shape, dtype=sd) for p in params],
        state2=[torch.zeros(p.shape, dtype=sd) for p in params],
        state3=[torch.zeros(p.shape, dtype=sd) for p in params] if ams else [],
        absmax=[[torch.zeros(nb(p.numel())) for p in params] if eight else [] for _ in range(3)],
        steps=[torch.zeros((), dtype=torch.int64) for _ in params],
        gnorm=[torch.zeros(100) for _ in params] if clip else [],
    )
    if not ams:
        lists["absmax"][2] = []

    def mv(t):
        return t.to(device) if t.is_contiguous() else t.to(device).t().contiguous().t()

    params = [mv(p) if not p.is_contiguous() else p.to(device) for p in params]
    grads = [g.to(device) if g.is_contiguous() else mv(g) for g in grads]
    out = dict(params=params, grads=grads)
    for k, v in lists.items():
        out[k] = [[t.to(device) for t in x] for x in v] if k == "absmax" else [t.to(device) for t in v]
    return out


def step(c, eight, block_wise, clip, device):
    q1 = torch.ops.adamw8.create_dynamic_map(True).to(device) if eight else None
    q2 = torch.ops.adamw8.create_dynamic_map(False).to(device) if eight else None
    h = torch.tensor([1e-2, 0.9, 0.999, 1e-8, 0.01], device=device)  # lr, beta1, beta2, eps, weight_decay
    torch.ops.adamw8.fused_step_multi(c["params"], c["grads"], c["state1"], c["state2"], c["state3"], *c["absmax"],
                                      q1, q2, c["steps"], c["gnorm"], h, block_wise, 10 if clip else 100, None, None)


def main() -> int:
    bad = 0
    for dtype, eight, ams, block_wise, clip, big in [(torch.bfloat16, True, True, True, False, False),
                                                      (torch.float32, True, False, False, True, False),
                                                      (torch.float16, False, True, True, False, False),
                                                      (torch.bfloat16, True, False, True, False, True),
                                                      (torch.float16, True, True, True, False, True)]:
        got = make(dtype, eight, ams, block_wise, clip, "cuda", big)
        want = make(dtype, eight, ams, block_wise, clip, "cpu", big)
        for _ in range(2):
            step(got, eight, block_wise, clip, "cuda")
            step(want, eight, block_wise, clip, "cpu")
        torch.cuda.synchronize()
        for a, b in zip(got["params"], want["params"]):
            if not torch.equal(a.cpu(), b):
                bad += 1
                print(f"differs from the CPU kernel: {dtype} eight={eight} block_wise={block_wise} clip={clip} "
                      f"big={big}")
    q = torch.ops.adamw8.create_dynamic_map(True)
    x = torch.randn(5000)
    for bw in (True, False):
        c, a = torch.ops.adamw8.quantize(x.cuda(), q.cuda(), bw, True)
        c0, a0 = torch.ops.adamw8.quantize(x, q, bw, True)
        back = torch.ops.adamw8.dequantize(c, a, q.cuda(), bw)
        if not (torch.equal(c.cpu(), c0) and torch.equal(a.cpu(), a0)
                and torch.equal(back.cpu(), torch.ops.adamw8.dequantize(c0, a0, q, bw))):
            bad += 1
            print(f"quantize differs from the CPU kernel (block_wise={bw})")
    print("sanitize case:", "ok" if bad == 0 else f"{bad} differences")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
