"""The CPU kernels' builds (csrc/cpu: base, avx2, avx512, chosen at run time) and launch configs,
each bit for bit against the PyTorch reference (adamw8/ops/reference.py): parameters, states and
absmax, every format, three parameter dtypes, vector tails, odd grains, non-finite gradients."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import bits, clone_state, hyper, make_state, op_args

import adamw8
from adamw8 import tuning
from adamw8.ops import reference as R

pytestmark = pytest.mark.skipif(not tuning.available(), reason="the compiled CPU kernels are not built")


def _caps():
    return tuning.capabilities() if tuning.available() else ["base"]


@pytest.fixture
def table():
    """Restores the launch table after a test that changes it."""
    before = tuning.get_table()
    yield
    tuning.set_table(before)


def _use(cap: str, grain: int) -> None:
    tuning.set_table({k: {"capability": cap, "grain": grain} for k in tuning.keys()})


def _mismatches(ref_p, ref_s, p, s) -> list[str]:
    """The names of the tensors whose bits differ (the maps are inputs)."""
    bad = [] if torch.equal(bits(ref_p), bits(p)) else ["param"]
    return bad + [k for k, v in s.items()
                  if isinstance(v, torch.Tensor) and k not in ("qmap1", "qmap2") and not torch.equal(bits(v), bits(ref_s[k]))]


FORMATS = list(itertools.product([True, False], [False, True], [True, False], [100, 95]))


@pytest.mark.parametrize("cap", _caps())
@pytest.mark.parametrize("eight,amsgrad,block_wise,pct", FORMATS,
                         ids=[f"{'8' if e else '32'}bit{'-ams' if a else ''}{'' if b else '-tensorwise'}-pct{p}"
                              for e, a, b, p in FORMATS])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_every_build_matches_the_reference_bit_for_bit(table, cap, eight, amsgrad, block_wise, pct, dtype):
    _use(cap, 1024)  # several tasks even for the small sizes
    torch.manual_seed(0)
    for n in (1, 15, 17, 255, 257, 4099, 70001):
        p = torch.randn(n).to(dtype)
        s = make_state(p, eight, amsgrad, block_wise, pct)
        h = hyper("cpu", lr=1e-2, wd=0.1)
        for it in range(4):
            g = torch.randn(n) * (30.0 if it == 2 else 1.0)
            if it == 3 and n > 20:
                g[3], g[7], g[11] = float("nan"), float("inf"), 3e19  # the non-finite rule, incl. g*g overflow
            g = g.to(dtype)
            ref_p, ref_s = p.clone(), clone_state(s)
            R.fused_step_reference(*op_args(ref_p, g, ref_s, h, block_wise, pct))
            torch.ops.adamw8.fused_step(*op_args(p, g, s, h, block_wise, pct))
            assert _mismatches(ref_p, ref_s, p, s) == [], (cap, n, it)


@pytest.mark.parametrize("eight", [True, False], ids=["8bit", "32bit"])
def test_grain_and_build_do_not_change_the_bits(table, eight):
    """One optimizer run per launch config (grains from one block to the whole tensor, every
    build): identical parameters and state."""
    shapes = [(3, 5), (300, 70), (4099,), (1 << 15,)]
    results = []
    for cap, grain in itertools.product(_caps(), (1, 256, 4096, 1 << 20)):
        _use(cap, grain)
        torch.manual_seed(1)
        ps = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
        opt = (adamw8.AdamW8bit if eight else adamw8.AdamW32bit)(ps, lr=1e-2, weight_decay=0.1)
        for _ in range(3):
            for p in ps:
                p.grad = torch.randn_like(p)
            opt.step()
        results.append(([p.detach().clone() for p in ps], opt.state_dict()))
    first_p, first_sd = results[0]
    for ps, sd in results[1:]:
        for a, b in zip(first_p, ps):
            assert torch.equal(a, b)
        for i in first_sd["state"]:
            for k, v in first_sd["state"][i].items():
                if isinstance(v, torch.Tensor):
                    assert torch.equal(v, sd["state"][i][k]), k


def test_quantize_op_every_build_matches_the_reference(table):
    torch.manual_seed(2)
    x = torch.randn(70001) * torch.logspace(-8, 0, 70001)
    x[5], x[9] = float("nan"), float("inf")
    for signed in (True, False):
        q = torch.ops.adamw8.create_dynamic_map(signed)
        xs = x if signed else x.abs()
        for bw in (True, False):
            want = R.quantize(xs, q, bw, signed)
            got = []
            for cap in _caps():
                _use(cap, 4096)
                got.append(torch.ops.adamw8.quantize(xs, q, bw, signed))
            for codes, absmax in got[1:]:
                assert torch.equal(codes, got[0][0]) and torch.equal(bits(absmax), bits(got[0][1]))
            assert torch.equal(got[0][0], want[0])
            assert torch.equal(bits(got[0][1]), bits(want[1]))


@pytest.mark.parametrize("kind", ["linear", "close triples", "repeated values", "dense near 0.5"])
def test_quantize_with_other_maps_matches_the_reference(table, kind):
    """Every route of quantize_block, through every build, against the reference's rule: a
    linear map (a threshold in the tiny bucket: the threshold route, not the packed one),
    triples of close codes (two thresholds in a bucket: span 2), repeated values and 100 codes
    in one bucket (the scalar forward steps).  The dynamic maps (packed route) are the other
    tests' (tests/test_emulation.py checks which map takes which route)."""
    if kind == "linear":
        q = torch.linspace(-1, 1, 256)
    elif kind == "close triples":
        q = torch.linspace(-1, 1, 256)
        for i in range(140, 250, 9):
            q[i + 1], q[i + 2] = q[i] + 0.001, q[i] + 0.002
    elif kind == "repeated values":
        q = torch.linspace(-1, 1, 256).mul(40).round().div(40)  # runs of equal values
    else:
        q = torch.cat([torch.linspace(-1, 0.49, 128), torch.linspace(0.5, 0.5 + 2**-12, 100),
                       torch.linspace(0.51, 1, 28)])  # 100 codes inside one table bucket
    q = q.sort().values.contiguous()
    torch.manual_seed(3)
    x = torch.cat([torch.randn(5000), torch.rand(5000) * 2 - 1, 0.5 + torch.rand(2000) * 2**-12, q, -q,
                   q[1:] + (q[1:] - q[:-1]) * torch.rand(255) * 0.5])
    want = R.quantize(x, q, True, True)
    for cap in _caps():
        _use(cap, 4096)
        got = torch.ops.adamw8.quantize(x, q, True, True)
        assert torch.equal(got[0], want[0]), (cap, (got[0] != want[0]).nonzero()[:5].tolist())
