"""CUDA-only checks of the kernels (docs/design.md: "The ops", "Compile"): agreement with the CPU kernels, streams,
CUDA-graph capture and replay, 64-bit indexing.  Skipped without a GPU."""

from __future__ import annotations

import pytest
import torch

import adamw8
from conftest import clone_state, hyper, make_state, op_args

pytestmark = pytest.mark.gpu


def _to(s: dict, device) -> dict:
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in s.items()}


def test_fast_paths_equal_the_ieee_operations():
    """The 8-bit kernels' square root and reciprocal without a branch per element (adamw8_math.h:
    sqrt_fast, rcp_rn; the fast paths of nvcc's own sqrtf and 1.0f / b) give the IEEE
    operations' bits (__fsqrt_rn, __frcp_rn) for every float in their ranges, and sqrt_fast
    flags exactly the roots outside its range: all 2^32 bit patterns, on the device."""
    counts = torch.zeros(2, dtype=torch.int64, device="cuda")
    torch.ops.adamw8._cuda_fast_path_check(counts)
    assert counts.tolist() == [0, 0]


@pytest.mark.parametrize("eight, amsgrad, block_wise, percentile",
                         [(False, False, True, 100), (False, True, True, 100), (True, False, True, 100),
                          (True, True, True, 100), (True, False, False, 100), (True, True, True, 10),
                          (False, False, True, 10), (True, False, False, 10)],
                         ids=["32bit", "32bit-ams", "8bit", "8bit-ams", "8bit-tensorwise", "8bit-ams-clip",
                              "32bit-clip", "8bit-tensorwise-clip"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
def test_cuda_kernel_equals_cpu_kernel(eight, amsgrad, block_wise, percentile, dtype):
    """Both kernels compute adamw8_math.h with no fused multiply-add: identical results
    (tests/test_emulation.py shows the same for the kernels' source on the CPU)."""
    n = 3 * 256 * 1000 + 77
    p_cpu = torch.randn(n).to(dtype)
    s_cpu = make_state(p_cpu, eight, amsgrad, block_wise, percentile)
    p_gpu, s_gpu = p_cpu.cuda(), _to(s_cpu, "cuda")
    h_c, h_g = hyper("cpu", lr=1e-2, wd=0.1), hyper("cuda", lr=1e-2, wd=0.1)
    for _ in range(4):
        g = torch.randn(n).to(dtype)
        torch.ops.adamw8.fused_step(*op_args(p_cpu, g, s_cpu, h_c, block_wise, percentile))
        torch.ops.adamw8.fused_step(*op_args(p_gpu, g.cuda(), s_gpu, h_g, block_wise, percentile))
    assert torch.equal(p_gpu.cpu(), p_cpu)
    for k, v in s_cpu.items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(s_gpu[k].cpu(), v), k


@pytest.mark.parametrize("eight, amsgrad", [(True, False), (True, True), (False, False)],
                         ids=["8bit", "8bit-ams", "32bit"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
def test_staged_units_equal_cpu_kernel(eight, amsgrad, dtype):
    """Enough units that every warp of the persistent grid takes many (on an H100 about ten),
    so a staging kernel stages each warp's next unit through shared memory (cp.async, sm_80 on)
    while it updates the current one: the 8-bit kernels of 16-bit parameters by default, the
    others too when built with ADAMW8_STAGE=2.  The CPU kernel's results, bit for bit, with a
    tail."""
    n = 256 * 40000 + 77
    p_cpu = torch.randn(n).to(dtype)
    s_cpu = make_state(p_cpu, eight, amsgrad, True, 100)
    p_gpu, s_gpu = p_cpu.cuda(), _to(s_cpu, "cuda")
    h_c, h_g = hyper("cpu", lr=1e-2, wd=0.1), hyper("cuda", lr=1e-2, wd=0.1)
    for _ in range(3):
        g = torch.randn(n).to(dtype)
        torch.ops.adamw8.fused_step(*op_args(p_cpu, g, s_cpu, h_c, True, 100))
        torch.ops.adamw8.fused_step(*op_args(p_gpu, g.cuda(), s_gpu, h_g, True, 100))
    assert torch.equal(p_gpu.cpu(), p_cpu)
    for k, v in s_cpu.items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(s_gpu[k].cpu(), v), k


def test_the_measured_kernels_stage_where_they_lose_no_block():
    """The launch's staging decision (fused_step_cuda.cu: kernel_info), as measured on the H100:
    on a GPU with cp.async and the 228 KB of shared memory per SM of sm_90 and sm_100 (H100,
    H200, B200), the 8-bit kernels of bf16 and fp16 parameters get their slots (1,792 bytes a
    warp, 2,176 with amsgrad) and keep their 3 resident blocks per SM; a kernel that does not
    stage in this build gets none.  Elsewhere a kernel has slots only at its unstaged occupancy."""
    info = lambda dtype, eight, ams: torch.ops.adamw8._cuda_launch_info(dtype, eight, ams)  # noqa: E731
    props = torch.cuda.get_device_properties(0)
    sm_bytes = getattr(props, "shared_memory_per_multiprocessor", 0) or (
        228 * 1024 if (props.major, props.minor) in ((9, 0), (10, 0)) else 0)
    if props.major >= 8 and sm_bytes >= 228 * 1024:
        for dtype in (torch.bfloat16, torch.float16):
            assert info(dtype, True, False) == [3, 8 * 1792]
            assert info(dtype, True, True) == [3, 8 * 2176]
    assert info(torch.float32, False, True)[1] == 0  # 32-bit amsgrad never stages
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for eight, ams in [(True, False), (True, True), (False, False)]:
            blocks, stage = info(dtype, eight, ams)
            assert blocks >= 1 and stage >= 0
    with pytest.raises(ValueError, match="float32, bfloat16 or float16"):
        info(torch.float64, True, False)


def test_no_op_runs_the_reference_on_cuda():
    """Every op has its compiled CUDA kernel (the reference fallback warns and is slow)."""
    assert adamw8.ops._missing["cuda"] == []


def test_non_contiguous_params_are_updated_in_place():
    """A transposed parameter goes through the kernels' strided path: no copy, same result."""
    w = torch.randn(300, 70, device="cuda").t()
    ref = w.detach().clone()  # contiguous copy, same values
    g = torch.randn(70, 300, device="cuda")
    s, s_ref = make_state(w, True, False), make_state(ref, True, False)
    h = hyper("cuda")
    ptr = w.data_ptr()
    torch.ops.adamw8.fused_step(*op_args(w, g, s, h))
    torch.ops.adamw8.fused_step(*op_args(ref, g.contiguous(), s_ref, h))
    assert w.data_ptr() == ptr and not w.is_contiguous()
    assert torch.equal(w, ref)
    for k in ("state1", "state2", "absmax1", "absmax2"):
        assert torch.equal(s[k], s_ref[k]), k


@pytest.mark.parametrize("block_wise", [True, False], ids=["blockwise", "tensorwise"])
def test_quantize_kernels_equal_cpu(block_wise):
    for signed in (True, False):
        q = torch.ops.adamw8.create_dynamic_map(signed)
        x = torch.randn(100_003) * torch.logspace(-8, 1, 100_003)
        c, a = torch.ops.adamw8.quantize(x.cuda(), q.cuda(), block_wise, signed)
        c0, a0 = torch.ops.adamw8.quantize(x, q, block_wise, signed)
        assert torch.equal(c.cpu(), c0) and torch.equal(a.cpu(), a0)
        back = torch.ops.adamw8.dequantize(c, a, q.cuda(), block_wise)
        assert torch.equal(back.cpu(), torch.ops.adamw8.dequantize(c0, a0, q, block_wise))


def test_runs_on_the_current_stream():
    p = torch.randn(1 << 20, device="cuda")
    s = make_state(p, True, False)
    h = hyper("cuda")
    ref_p, ref_s = p.clone(), clone_state(s)
    g = torch.randn_like(p)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.ops.adamw8.fused_step(*op_args(p, g, s, h))
        done = torch.cuda.Event()
        done.record(side)
    done.synchronize()
    torch.ops.adamw8.fused_step(*op_args(ref_p, g, ref_s, h))
    assert torch.equal(p, ref_p)


@pytest.mark.parametrize("cls", [adamw8.AdamW32bit, adamw8.AdamW8bit], ids=["32bit", "8bit"])
def test_manual_cuda_graph_replays_with_changing_lr_and_found_inf(cls):
    """Capture opt.step() once; replays see new lr values (set as floats, as schedulers do) and
    AMP's found_inf."""
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
        opt.param_groups[0]["lr"] = lr  # a plain number: written into the device tensor the graph reads
        opt_ref.param_groups[0]["lr"] = lr
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
    torch.ops.adamw8.fused_step(*op_args(p, g, s, hyper("cuda", lr=1e-2, wd=0.0)))
    # first AdamW step with g = 1: p -= lr * 1 / (1 + eps)
    assert torch.allclose(p[-300:], torch.full((300,), -1e-2, device="cuda"))
    assert torch.allclose(p[:5], torch.full((5,), -1e-2, device="cuda"))
    assert (p[5:1000] == 0).all() and (s["state1"][-300:] != s["state1"][1000]).all()
