"""The step kernels under Nsight Compute (scripts/gpu_profile.sh): one profiled optimizer step
per case, between cudaProfilerStart/Stop, after two warm-up steps.

    ncu --profile-from-start off -k regex:fused_step_kernel python scripts/ncu_case.py

Cases: AdamW8bit on fp32 and on bf16 parameters, AdamW32bit on fp32; 4 tensors of
4096 x 4096 (67 M parameters), the shape class of the SPEC section 7 set."""

from __future__ import annotations

import sys

import torch

import adamw8

CASES = [("AdamW8bit", torch.float32), ("AdamW8bit", torch.bfloat16), ("AdamW32bit", torch.float32)]


def main(n_tensors: int = 4) -> None:
    if not torch.cuda.is_available():
        sys.exit("ncu_case: needs a CUDA device")
    for name, dtype in CASES:
        g = torch.Generator(device="cuda").manual_seed(0)
        ps = []
        for _ in range(n_tensors):
            p = torch.nn.Parameter(torch.randn(4096, 4096, device="cuda", dtype=dtype, generator=g) * 0.02)
            p.grad = torch.randn(4096, 4096, device="cuda", dtype=dtype, generator=g) * 1e-3
            ps.append(p)
        opt = getattr(adamw8, name)(ps, lr=1e-3)
        opt.step()
        opt.step()
        torch.cuda.synchronize()
        torch.cuda.cudart().cudaProfilerStart()
        opt.step()
        torch.cuda.synchronize()
        torch.cuda.cudart().cudaProfilerStop()
        print(f"ncu_case: profiled {name} {dtype}", flush=True)
        del opt, ps


if __name__ == "__main__":
    main()
