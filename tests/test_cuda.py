"""CUDA-only checks of the kernels (SPEC §3, §4): agreement with the CPU kernels, streams,
CUDA-graph capture and replay, 64-bit indexing.  Skipped without a GPU."""

from __future__ import annotations

import pytest
import torch

import adamw8
from conftest import clone_state, hyper, make_state, op_args

pytestmark = pytest.mark.gpu


def _to(s: dict, device) -> dict:
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in s.items()}


@pytest.mark.parametrize("eight, amsgrad", [(False, False), (False, True), (True, False), (True, True)],
                         ids=["32bit", "32bit-ams", "8bit", "8bit-ams"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
def test_cuda_kernel_equals_cpu_kernel(eight, amsgrad, dtype):
    """Both kernels compute adamw8_math.h with no fused multiply-add: identical results."""
    n = 3 * 256 * 1000 + 77
    p_cpu = torch.randn(n).to(dtype)
    s_cpu = make_state(p_cpu, eight, amsgrad)
    p_gpu, s_gpu = p_cpu.cuda(), _to(s_cpu, "cuda")
    lr_c, b1_c, b2_c = hyper("cpu", lr=1e-2)
    lr_g, b1_g, b2_g = hyper("cuda", lr=1e-2)
    for _ in range(4):
        g = torch.randn(n).to(dtype)
        torch.ops.adamw8.fused_step(*op_args(p_cpu, g, s_cpu, lr_c, b1_c, b2_c, wd=0.1))
        torch.ops.adamw8.fused_step(*op_args(p_gpu, g.cuda(), s_gpu, lr_g, b1_g, b2_g, wd=0.1))
    assert torch.equal(p_gpu.cpu(), p_cpu)
    for k, v in s_cpu.items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(s_gpu[k].cpu(), v), k


def test_runs_on_the_current_stream():
    p = torch.randn(1 << 20, device="cuda")
    s = make_state(p, True, False)
    lr, b1, b2 = hyper("cuda")
    ref_p, ref_s = p.clone(), clone_state(s)
    g = torch.randn_like(p)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.ops.adamw8.fused_step(*op_args(p, g, s, lr, b1, b2))
        done = torch.cuda.Event()
        done.record(side)
    done.synchronize()
    torch.ops.adamw8.fused_step(*op_args(ref_p, g, ref_s, lr, b1, b2))
    assert torch.equal(p, ref_p)


@pytest.mark.parametrize("cls", [adamw8.AdamW32bit, adamw8.AdamW8bit], ids=["32bit", "8bit"])
def test_manual_cuda_graph_replays_with_changing_lr_and_found_inf(cls):
    """Capture opt.step() once; replays see new lr values and AMP's found_inf."""
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(n, device="cuda")) for n in (5000, 300, 70000)]
    ref = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt = cls(params, lr=1e-3, min_8bit_size=1000)
    opt_ref = cls(ref, lr=1e-3, min_8bit_size=1000)
    grads = [torch.randn_like(p) for p in params]
    for p, q, g in zip(params, ref, grads):
        p.grad, q.grad = g, g.clone()
    opt.found_inf = torch.zeros((), device="cuda")
    opt.step()  # eager first step creates the state
    opt_ref.step()
    graph = torch.cuda.CUDAGraph()
    torch.cuda.synchronize()
    with torch.cuda.graph(graph):
        opt.step()
    for i in range(6):
        lr = 1e-3 / (i + 1)
        opt.param_groups[0]["lr"].fill_(lr)
        opt_ref.param_groups[0]["lr"].fill_(lr)
        skip = i == 3
        opt.found_inf.fill_(1.0 if skip else 0.0)
        for g in grads:
            g.normal_()
        for q, g in zip(ref, grads):
            q.grad.copy_(g)
        graph.replay()
        if not skip:
            opt_ref.step()
    torch.cuda.synchronize()
    for p, q in zip(params, ref):
        assert torch.equal(p, q)
        for k, v in opt_ref.state[q].items():
            assert torch.equal(opt.state[p][k], v), k


def test_more_than_2_31_elements():
    """64-bit indexing: the last elements of a 2^31 + 300 element tensor are updated."""
    n = (1 << 31) + 300
    need = n * (4 + 4 + 2) + (1 << 30)
    free, _ = torch.cuda.mem_get_info()
    if free < need:
        pytest.skip(f"needs {need / 2**30:.1f} GiB of free GPU memory, {free / 2**30:.1f} GiB free")
    p = torch.zeros(n, device="cuda")
    g = torch.zeros(n, device="cuda")
    g[-300:] = 1.0
    g[:5] = 1.0
    s = make_state(p, True, False)
    lr, b1, b2 = hyper("cuda", lr=1e-2)
    torch.ops.adamw8.fused_step(*op_args(p, g, s, lr, b1, b2, wd=0.0))
    # first AdamW step with g = 1: p -= lr * 1 / (1 + eps)
    assert torch.allclose(p[-300:], torch.full((300,), -1e-2, device="cuda"))
    assert torch.allclose(p[:5], torch.full((5,), -1e-2, device="cuda"))
    assert (p[5:1000] == 0).all() and (s["state1"][-300:] != s["state1"][1000]).all()
