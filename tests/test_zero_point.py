"""The zero point of 8-bit state (docs/design.md): a positive second moment never becomes
code 0, so rarely-updated elements never move by lr * m_hat / eps.  And the non-finite rule:
an element whose gradient, m or v is not finite is reset and keeps its parameter."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest
import torch

import adamw8
from adamw8.ops import reference as R
from conftest import hyper, make_state, op_args

BENCH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "bench_spikes.py"
BOUND = 3.0  # largest single-step change of any element, in units of lr


def bench():
    spec = importlib.util.spec_from_file_location("bench_spikes", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


EIGHT_BIT = {
    "blockwise": lambda ps, lr: adamw8.AdamW8bit(ps, lr=lr, weight_decay=0.0),
    "tensorwise": lambda ps, lr: adamw8.AdamW8bit(ps, lr=lr, weight_decay=0.0, block_wise=False),
    "amsgrad": lambda ps, lr: adamw8.AdamW8bit(ps, lr=lr, weight_decay=0.0, amsgrad=True),
}


@pytest.mark.parametrize("variant", list(EIGHT_BIT))
@pytest.mark.parametrize("scenario", ["repro", "const-1e-3", "const-1e-4", "const-1e-5", "const-1e-6",
                                      "const-1e-7", "embedding"])
def test_no_update_spikes(scenario, variant):
    b = bench()
    param, grads = b.scenarios(60)[scenario]
    worst = b._run(lambda ps: EIGHT_BIT[variant](ps, b.LR), param, grads)
    assert worst <= BOUND, f"{scenario}: an element moved by {worst:.1f} x lr in one step"


def test_minimal_repro_lands_near_torch():
    """p[1] after the two steps: torch -0.00167; nearest rounding gave -4.20."""
    b = bench()
    param, grads = b.repro_grads()
    finals = {}
    for name, make in (("torch", lambda ps: torch.optim.AdamW(ps, lr=b.LR, weight_decay=0.0)),
                       ("adamw8", lambda ps: adamw8.AdamW8bit(ps, lr=b.LR, weight_decay=0.0))):
        p = torch.nn.Parameter(param.clone())
        opt = make([p])
        for g in grads:
            p.grad = g.clone()
            opt.step()
        finals[name] = p[1].item()
    assert finals["torch"] == pytest.approx(-0.00167, abs=2e-5)
    assert -3 * b.LR <= finals["adamw8"] < 0


def _reference_run(param, grads, lr=1e-3):
    """The scenario through the reference op directly; returns the worst step / lr."""
    p = param.reshape(-1).clone()
    s = make_state(p, True, False)
    h = hyper("cpu", lr=lr, wd=0.0)
    worst = 0.0
    for g in grads:
        before = p.clone()
        R.fused_step_reference(*op_args(p, g.reshape(-1), s, h))
        worst = max(worst, (p - before).abs().max().item() / lr)
    return worst


def test_the_scenarios_detect_nearest_rounding(monkeypatch):
    """Without the floor (plain nearest rounding), the same scenarios spike: the test can fail."""
    b = bench()
    monkeypatch.setattr(R, "positive_floor", lambda codes, values: codes)
    param, grads = b.repro_grads()
    assert _reference_run(param, grads) > 1000
    param, grads = b.scenarios(60)["embedding"]
    assert _reference_run(param, grads) > 100


@pytest.mark.parametrize("block_wise", [True, False], ids=["blockwise", "tensorwise"])
def test_unsigned_quantize_never_puts_a_positive_value_on_zero(block_wise):
    q2 = torch.ops.adamw8.create_dynamic_map(False)
    x = torch.rand(4096) * torch.logspace(-12, 0, 4096)
    x[::7] = 0.0
    codes, absmax = torch.ops.adamw8.quantize(x, q2, block_wise, False)
    ref_codes, ref_absmax = R.quantize(x, q2, block_wise, False)
    assert torch.equal(codes, ref_codes) and torch.equal(absmax, ref_absmax)
    assert ((codes == 0) == (x == 0)).all()
    assert (x > 0).sum() > 0 and ((x > 0) & (x < 1e-7 * x.max())).sum() > 100  # the case is exercised


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("amsgrad", [False, True], ids=["adam", "amsgrad"])
def test_nonfinite_elements_are_reset_and_keep_their_parameter(dtype, amsgrad):
    """NaN, +-inf and a gradient whose square overflows (|g| > 1.8e19): each such element
    keeps its parameter, its m and v become 0, and no absmax becomes non-finite."""
    n = 1000
    p = torch.randn(n).to(dtype)
    s = make_state(p, True, amsgrad)
    h = hyper("cpu", lr=1e-2)
    g0 = torch.randn(n).to(dtype)
    torch.ops.adamw8.fused_step(*op_args(p, g0, s, h))
    bad = torch.tensor([3, 300, 301, 600, 999])
    g = torch.randn(n)
    g[bad] = torch.tensor([float("nan"), float("inf"), -float("inf"), 2e19, -3e19])
    g = g.to(dtype)
    before = p.clone()
    ref_p, ref_s = p.clone(), {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in s.items()}
    torch.ops.adamw8.fused_step(*op_args(p, g, s, h))
    R.fused_step_reference(*op_args(ref_p, g, ref_s, h))
    assert torch.equal(p, ref_p)
    for k in ("state1", "state2", "state3", "absmax1", "absmax2", "absmax3"):
        if s[k] is not None:
            assert torch.equal(s[k], ref_s[k]), k
    assert torch.equal(p[bad], before[bad])
    m = R.dequantize(s["state1"], s["absmax1"], s["qmap1"], True)
    v = R.dequantize(s["state2"], s["absmax2"], s["qmap2"], True)
    assert (m[bad] == 0).all() and (v[bad] == 0).all()
    assert torch.isfinite(s["absmax1"]).all() and torch.isfinite(s["absmax2"]).all()
    good = torch.ones(n, dtype=torch.bool)
    good[bad] = False
    assert (p[good] != before[good]).float().mean() > 0.5  # the others moved (bf16 rounds some back)


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_nan_stays_nan_through_quantize(signed):
    """A NaN makes its block's absmax NaN (torch.amax's rule), so the block dequantizes to NaN;
    the sign fix leaves NaN alone.  The kernel and the reference agree."""
    q = torch.ops.adamw8.create_dynamic_map(signed)
    x = torch.rand(600) * (2 if signed else 1) - (1 if signed else 0)
    x[10] = float("nan")
    x[300] = -float("nan")
    codes, absmax = torch.ops.adamw8.quantize(x, q, True, signed)
    ref_codes, ref_absmax = R.quantize(x, q, True, signed)
    assert torch.equal(codes, ref_codes)
    assert torch.isnan(absmax[:2]).all() and torch.equal(absmax[2:], ref_absmax[2:])
    back = torch.ops.adamw8.dequantize(codes, absmax, q, True)
    assert torch.isnan(back[:512]).all() and not torch.isnan(back[512:]).any()
