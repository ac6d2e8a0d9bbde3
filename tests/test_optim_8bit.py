"""8-bit adamw8 optimizers: state against the reference after every step, error against 32-bit."""

from __future__ import annotations

import pytest
import torch

import adamw8
from adamw8.ops import reference as R
from conftest import check_against_reference, clone_state, device_params, dtype_id

STATE_KEYS = ("state1", "state2", "state3", "absmax1", "absmax2", "absmax3", "qmap1", "qmap2", "step", "gnorm_vec")


def snapshot(opt, p):
    st = opt.state[p]
    return clone_state({k: st.get(k) for k in STATE_KEYS})


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=dtype_id)
@pytest.mark.parametrize("amsgrad", [False, True], ids=["adam", "amsgrad"])
@pytest.mark.parametrize("block_wise", [True, False], ids=["blockwise", "tensorwise"])
def test_state_matches_reference_every_step(device, dtype, amsgrad, block_wise):
    """After every step the codes and absmax equal the reference's (the reference is
    re-synced to the optimizer's state before each step, so one flip cannot cascade)."""
    shapes = [(4097,), (300,), (64, 100), (1,)]
    params = [torch.nn.Parameter(torch.randn(s, device=device).to(dtype)) for s in shapes]
    opt = adamw8.AdamW8bit(params, lr=1e-2, weight_decay=0.1, amsgrad=amsgrad, min_8bit_size=1000,
                           block_wise=block_wise)
    h = torch.tensor([1e-2, 0.9, 0.999, 1e-8, 0.1], device=device)  # lr, beta1, beta2, eps, weight_decay
    for it in range(20):
        grads = [torch.randn(s, device=device).to(dtype) * (20.0 if it == 7 else 1.0) for s in shapes]
        before = []
        for p, g in zip(params, grads):
            p.grad = g
            if p in opt.state:
                before.append((p.detach().clone(), snapshot(opt, p)))
            else:  # the first step creates fresh state: zeros, as make_state would
                before.append(None)
        opt.step()
        for p, g, b in zip(params, grads, before):
            eight = p.numel() >= 1000
            assert opt.state[p]["state1"].dtype == (torch.uint8 if eight else torch.float32)
            if b is None:
                continue
            ref_p, ref_s = b
            args = (ref_p, g) + tuple(ref_s[k] for k in STATE_KEYS)
            new = R.step_values(*args, h, block_wise)
            R.fused_step_reference(*args, h, block_wise)
            got = {k: opt.state[p].get(k) for k in STATE_KEYS}
            check_against_reference(ref_p, ref_s, p.detach(), got, new, block_wise, eight, amsgrad, dtype)
            assert got["step"].item() == it + 1


def _bnb_protocol_errors(make_opt, shape=(1024, 1024), steps=50, device="cpu"):
    """bitsandbytes' own test protocol (tests/test_optim.py, test_optimizer8bit): params
    randn*0.1, grads randn*0.01, lr 1e-3; torch.optim.Adam as the 32-bit run; every 10 steps
    the 8-bit params are reset to the 32-bit ones and the 32-bit state to the dequantized
    8-bit state.  Returns the worst per-step (mean abs error, mean relative error,
    normwise relative error) over the run."""
    torch.manual_seed(0)
    p32 = torch.nn.Parameter(torch.randn(shape, device=device) * 0.1)
    p8 = torch.nn.Parameter(p32.detach().clone())
    o32 = torch.optim.Adam([p32], lr=1e-3)
    o8 = make_opt([p8])
    worst = [0.0, 0.0, 0.0]
    for i in range(steps):
        g = torch.randn(shape, device=device) * 0.01
        p32.grad, p8.grad = g.clone(), g.clone()
        o32.step()
        o8.step()
        err = (p32 - p8).abs()
        stats = (err.mean().item(), (err / (p32.abs() + 1e-9)).mean().item(), (err.sum() / p32.abs().sum()).item())
        worst = [max(w, s) for w, s in zip(worst, stats)]
        if i % 10 == 0 and i > 0:
            with torch.no_grad():
                p8.copy_(p32)
                st = o8.state[p8]
                o32.state[p32]["exp_avg"].copy_(R.dequantize(st["state1"], st["absmax1"], st["qmap1"], True))
                o32.state[p32]["exp_avg_sq"].copy_(R.dequantize(st["state2"], st["absmax2"], st["qmap2"], True))
    return worst


def test_param_error_against_32bit():
    """bnb's bar for fp32 (mean abs error < 6e-5) over 50 steps at lr 1e-3; the relative
    bar (6e-4) is applied normwise (sum|err| / sum|p|): the elementwise mean of
    err/(|p|+1e-9) is dominated by parameters near zero (bitsandbytes' own 8-bit Adam
    scores ~2.5e-2 on it under this protocol, as does adamw8; see the bnb test below)."""
    mean_abs, _, normwise_rel = _bnb_protocol_errors(lambda ps: adamw8.AdamW8bit(ps, lr=1e-3, weight_decay=0.0))
    assert mean_abs < 6e-5
    assert normwise_rel < 6e-4


def test_param_error_at_least_as_good_as_bitsandbytes():
    bnb = pytest.importorskip("bitsandbytes")
    ours = _bnb_protocol_errors(lambda ps: adamw8.AdamW8bit(ps, lr=1e-3, weight_decay=0.0), shape=(512, 1024))
    theirs = _bnb_protocol_errors(lambda ps: bnb.optim.Adam8bit(ps, lr=1e-3), shape=(512, 1024))
    # mean abs and normwise relative error; the elementwise relative mean is noise from
    # a few parameters near zero and swings either way between runs
    assert ours[0] <= theirs[0] * 1.02, (ours, theirs)
    assert ours[2] <= theirs[2] * 1.02, (ours, theirs)


@pytest.mark.parametrize("device", device_params())
def test_min_8bit_size_keeps_small_tensors_32bit(device):
    small = torch.nn.Parameter(torch.randn(4095, device=device))
    exact = torch.nn.Parameter(torch.randn(64, 64, device=device))  # 4096 elements: 8-bit
    opt = adamw8.AdamW8bit([small, exact])
    small.grad, exact.grad = torch.randn_like(small), torch.randn_like(exact)
    opt.step()
    assert opt.state[small]["state1"].dtype == torch.float32 and "absmax1" not in opt.state[small]
    assert opt.state[exact]["state1"].dtype == torch.uint8
    assert opt.state[exact]["absmax1"].shape == (16,)


@pytest.mark.parametrize("cls, bits", [(adamw8.AdamW8bit, 8), (adamw8.AdamW32bit, 32), (adamw8.AdamW, 32)],
                         ids=["AdamW8bit", "AdamW32bit", "AdamW"])
def test_state_bytes_per_param(cls, bits):
    """docs/design.md, "Checkpoints": 8-bit state costs 2 + 2*4/256 = 2.03125 bytes/param; 32-bit costs 8."""
    model = torch.nn.Sequential(torch.nn.Linear(512, 1024), torch.nn.Linear(1024, 512, bias=False))
    opt = cls(model.parameters())
    model(torch.randn(2, 512)).sum().backward()
    opt.step()
    shared = {id(t) for st in opt.state.values() for k, t in st.items() if k.startswith("qmap")}
    big = [p for p in model.parameters() if p.numel() >= 4096]
    nbytes = sum(t.numel() * t.element_size() for p in big for k, t in opt.state[p].items()
                 if isinstance(t, torch.Tensor) and id(t) not in shared and k != "step")
    per_param = nbytes / sum(p.numel() for p in big)
    assert per_param == pytest.approx(2.03125 if bits == 8 else 8.0, abs=1e-3)


def test_optim_bits_selects_format():
    p = torch.nn.Parameter(torch.randn(5000))
    for bits, dt in ((8, torch.uint8), (32, torch.float32)):
        opt = adamw8.AdamW([p], optim_bits=bits)
        p.grad = torch.randn_like(p)
        opt.step()
        assert opt.state[p]["state1"].dtype == dt


class OpCounter(torch.utils._python_dispatch.TorchDispatchMode):
    """Records every adamw8 op that reaches the dispatcher."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "adamw8" and func.__name__.startswith("fused_step"):
            self.calls.append((func.__name__, len(args[0]) if isinstance(args[0], list) else 1))
        return func(*args, **(kwargs or {}))


def test_one_op_call_per_bucket():
    """step() makes one fused_step_multi call per (device, dtype, state format) bucket of a
    param group — never one kernel call per parameter."""
    model = torch.nn.Sequential(*[torch.nn.Linear(128, 128) for _ in range(12)])  # 12 weights, 12 biases
    model[0].to(torch.bfloat16)
    opt = adamw8.AdamW8bit(model.parameters(), lr=1e-3)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    with OpCounter() as counter:
        opt.step()
    # buckets: fp32 8-bit weights (11), fp32 32-bit biases (11, < min_8bit_size), bf16 8-bit weight, bf16 bias
    assert sorted(counter.calls) == sorted([("fused_step_multi.default", 11), ("fused_step_multi.default", 11),
                                            ("fused_step_multi.default", 1), ("fused_step_multi.default", 1)])


def test_large_buckets_are_split_into_calls_of_64_eager():
    """Eager: calls of at most 64 tensors, what one CUDA launch takes (compiled: 32,
    tests/test_compile_passes.py counts those)."""
    params = [torch.nn.Parameter(torch.randn(10)) for _ in range(150)]
    opt = adamw8.AdamW32bit(params)
    for p in params:
        p.grad = torch.randn_like(p)
    with OpCounter() as counter:
        opt.step()
    assert sorted(n for _, n in counter.calls) == [22, 64, 64]
