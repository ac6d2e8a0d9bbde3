"""adamw8::fused_step / fused_step_multi against the PyTorch reference, and opcheck."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from adamw8.ops import reference as R
from conftest import (
    DTYPES,
    ODD_SIZES,
    check_against_reference,
    clone_state,
    device_params,
    dtype_id,
    hyper,
    make_state,
    op_args,
    reference_values,
)

FORMATS = [  # (eight_bit, amsgrad, block_wise, percentile)
    (False, False, True, 100),
    (False, True, True, 100),
    (False, False, True, 95),
    (True, False, True, 100),
    (True, True, True, 100),
    (True, False, False, 100),
    (True, True, False, 90),
    (True, False, True, 95),
]


def fmt_id(f):
    eight, ams, bw, pct = f
    return f"{'8bit' if eight else '32bit'}{'-ams' if ams else ''}{'' if bw else '-tensorwise'}" + (
        f"-pct{pct}" if pct < 100 else ""
    )


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("fmt", FORMATS, ids=fmt_id)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("n", ODD_SIZES + [5000])
def test_fused_step_matches_reference(device, fmt, dtype, n):
    """Five steps, the reference re-synced to the op's state before each step."""
    eight, amsgrad, block_wise, pct = fmt
    param = torch.randn(n, device=device).to(dtype)
    s = make_state(param, eight, amsgrad, block_wise, pct)
    h = hyper(device, lr=1e-2, wd=0.1)
    for it in range(5):
        grad = (torch.randn(n, device=device) * (30.0 if it == 3 else 1.0)).to(dtype)  # a spike at step 4
        ref_p, ref_s = param.clone(), clone_state(s)
        new = reference_values(ref_p, grad, clone_state(s), h, block_wise, pct)
        R.fused_step_reference(*op_args(ref_p, grad, ref_s, h, block_wise, pct))
        torch.ops.adamw8.fused_step(*op_args(param, grad, s, h, block_wise, pct))
        check_against_reference(ref_p, ref_s, param, s, new, block_wise, eight, amsgrad, dtype)
        assert s["step"].item() == it + 1
        if pct < 100:
            torch.testing.assert_close(s["gnorm_vec"], ref_s["gnorm_vec"], rtol=1e-6, atol=0)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("fmt", FORMATS[:2] + FORMATS[3:5], ids=fmt_id)
def test_fused_step_non_contiguous(device, fmt):
    """A transposed parameter (and gradient) is updated in flat row-major order."""
    eight, amsgrad, block_wise, pct = fmt
    base = torch.randn(70, 90, device=device)
    param = base.t()  # non-contiguous view
    assert not param.is_contiguous()
    s = make_state(param, eight, amsgrad, block_wise, pct)
    ref_p, ref_s = param.contiguous().clone(), clone_state(s)
    h = hyper(device)
    for _ in range(3):
        grad = torch.randn(70, 90, device=device).t()
        torch.ops.adamw8.fused_step(*op_args(param, grad, s, h))
        R.fused_step_reference(*op_args(ref_p, grad.contiguous(), ref_s, h))
    torch.testing.assert_close(param, ref_p, rtol=0, atol=0)
    for k in ("state1", "state2", "absmax1", "absmax2"):
        if s[k] is not None:
            torch.testing.assert_close(s[k], ref_s[k], rtol=0, atol=0)
    assert torch.equal(base.t(), param)  # the view still aliases its base


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("eight", [False, True], ids=["32bit", "8bit"])
def test_multi_equals_single(device, eight):
    """One fused_step_multi call equals one fused_step per parameter, bit for bit."""
    sizes = [1, 300, 4097, 0, 1000]
    params = [torch.randn(n, device=device) for n in sizes]
    grads = [torch.randn(n, device=device) for n in sizes]
    states = [make_state(p, eight, True) for p in params]
    singles = [(p.clone(), clone_state(s)) for p, s in zip(params, states)]
    h = hyper(device, lr=3e-3)
    for _ in range(3):
        lst = lambda k: [s[k] for s in states] if states[0][k] is not None else []  # noqa: E731
        torch.ops.adamw8.fused_step_multi(
            params, grads, lst("state1"), lst("state2"), lst("state3"), lst("absmax1"), lst("absmax2"),
            lst("absmax3"), states[0]["qmap1"], states[0]["qmap2"], lst("step"), [], h)
        for (p, s), g in zip(singles, grads):
            torch.ops.adamw8.fused_step(*op_args(p, g, s, h))
    for (p1, s1), p2, s2 in zip(singles, params, states):
        assert torch.equal(p1, p2)
        for k, v in s1.items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(v, s2[k]), k


@pytest.mark.parametrize("device", device_params())
def test_found_inf_skips_everything(device):
    param = torch.randn(1000, device=device)
    s = make_state(param, True, True, percentile=90)
    before_p, before_s = param.clone(), clone_state(s)
    h = hyper(device)
    found_inf = torch.ones((), device=device)
    grad_scale = torch.full((), 1024.0, device=device)
    torch.ops.adamw8.fused_step(*op_args(param, torch.randn(1000, device=device), s, h, percentile=90),
                                grad_scale=grad_scale, found_inf=found_inf)
    assert torch.equal(param, before_p)
    for k, v in before_s.items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, s[k]), k


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("eight", [False, True], ids=["32bit", "8bit"])
def test_grad_scale_unscales(device, eight):
    """grad_scale divides the gradient inside the kernel: same result as a pre-divided gradient."""
    param = torch.randn(3000, device=device)
    s = make_state(param, eight, False)
    p2, s2 = param.clone(), clone_state(s)
    h = hyper(device)
    grad = torch.randn(3000, device=device)
    scale = torch.full((), 512.0, device=device)
    torch.ops.adamw8.fused_step(*op_args(param, grad * 512.0, s, h), grad_scale=scale,
                                found_inf=torch.zeros((), device=device))
    torch.ops.adamw8.fused_step(*op_args(p2, grad, s2, h))
    assert torch.equal(param, p2)  # (g * 512) / 512 == g exactly: 512 is a power of two


@pytest.mark.parametrize("device", device_params())
def test_nonfinite_grad_resets_8bit_element(device):
    """bnb's behaviour (docs/design.md, "8-bit state"): a non-finite element resets its m, v; its parameter stays."""
    param = torch.randn(600, device=device)
    s = make_state(param, True, False)
    h = hyper(device)
    torch.ops.adamw8.fused_step(*op_args(param, torch.randn(600, device=device), s, h))
    before = param.clone()
    grad = torch.randn(600, device=device)
    grad[[3, 300]] = float("nan")
    grad[17] = float("inf")
    torch.ops.adamw8.fused_step(*op_args(param, grad, s, h))
    for i in (3, 17, 300):
        assert param[i] == before[i]
        assert R.dequantize(s["state1"], s["absmax1"], s["qmap1"], True)[i] == 0
        assert R.dequantize(s["state2"], s["absmax2"], s["qmap2"], True)[i] == 0
    assert torch.isfinite(param).all() and (param != before).sum() == 597


def _opcheck_cases(device):
    h = hyper(device)
    for eight, ams, pct in itertools.product([False, True], [False, True], [100, 90]):
        param = torch.randn(300, device=device)
        s = make_state(param, eight, ams, percentile=pct)
        yield "fused_step", op_args(param, torch.randn(300, device=device), s, h, percentile=pct), {}
    params = [torch.randn(n, device=device) for n in (3, 700)]
    states = [make_state(p, True, False) for p in params]
    lst = lambda k: [s[k] for s in states]  # noqa: E731
    yield "fused_step_multi", (
        params, [torch.randn_like(p) for p in params], lst("state1"), lst("state2"), [], lst("absmax1"),
        lst("absmax2"), [], states[0]["qmap1"], states[0]["qmap2"], lst("step"), [], hyper(device, wd=0.0),
    ), {"grad_scale": torch.ones((), device=device), "found_inf": torch.zeros((), device=device)}
    q1, q2 = torch.ops.adamw8.create_dynamic_map(True).to(device), torch.ops.adamw8.create_dynamic_map(False)
    x = torch.randn(1000, device=device)
    yield "quantize", (x, q1, True, True), {}
    yield "quantize", (x.abs(), q2.to(device), False, False), {}
    codes, absmax = torch.ops.adamw8.quantize(x, q1)
    yield "dequantize", (codes, absmax, q1, True), {}
    yield "create_dynamic_map", (True,), {}


@pytest.mark.parametrize("device", device_params())
def test_opcheck_all_ops(device):
    """Every op passes torch.library.opcheck with all its default test utils."""
    checked = set()
    for name, args, kwargs in _opcheck_cases(device):
        torch.library.opcheck(getattr(torch.ops.adamw8, name).default, args, kwargs)
        checked.add(name)
    assert checked == {"fused_step", "fused_step_multi", "quantize", "dequantize", "create_dynamic_map"}


@pytest.mark.parametrize("device", device_params())
def test_sign_fix_keeps_small_negative_m_negative(device):
    """bnb's sign fix (docs/design.md, "8-bit state"): an m far below its block's absmax, whose nearest code is
    +0, is stored as the smallest negative code instead."""
    param = torch.zeros(512, device=device)
    grad = torch.full((512,), -1e-9, device=device)
    grad[0] = grad[256] = 1.0  # each block's absmax comes from one large element
    grad[1::2] = 1e-9  # tiny positives next to the tiny negatives
    s = make_state(param, True, False)
    h = hyper(device)
    ref_p, ref_s = param.clone(), clone_state(s)
    torch.ops.adamw8.fused_step(*op_args(param, grad, s, h))
    R.fused_step_reference(*op_args(ref_p, grad, ref_s, h))
    assert torch.equal(s["state1"], ref_s["state1"])
    m = R.dequantize(s["state1"], s["absmax1"], s["qmap1"], True)
    neg = grad < 0
    assert (m[neg] < 0).all(), "a small negative m became +0"
    assert (s["state1"][neg] == 126).all()
    assert (s["state1"][grad == 1e-9] == 127).all()  # tiny positives round to +0: no fix needed


def flat_args(params, grads, states, h, block_wise=True, percentile=100):
    """fused_step_multi's arguments in the flat form (one buffer per state, a layout) for
    ``states`` made by make_state, the buffers filled from them."""
    offs, total = [], 0
    for p in params:
        offs.append(total)
        total += -(-p.numel() // 256) * 256
    dev = params[0].device

    def flat(key, size, region):
        if states[0][key] is None:
            return []
        buf = torch.zeros(size, dtype=states[0][key].dtype, device=dev)
        for i, p in enumerate(params):
            start, n = region(i, p)
            buf[start:start + n] = states[i][key].reshape(-1)
        return [buf]

    nb = lambda p: R.num_blocks(p.numel(), block_wise)  # noqa: E731
    absmax_size = total // 256 if block_wise else len(params)
    lists = {k: flat(k, total, lambda i, p: (offs[i], p.numel())) for k in ("state1", "state2", "state3")}
    lists.update({k: flat(k, absmax_size, lambda i, p: (offs[i] // 256 if block_wise else i, nb(p)))
                  for k in ("absmax1", "absmax2", "absmax3")})
    counter = torch.zeros(1, dtype=torch.int64, device=dev)  # the kernels' completion counter, after the slots
    lists["steps"] = [torch.cat([torch.stack([s["step"] for s in states]), counter])]
    lists["gnorm_vecs"] = [torch.cat([s["gnorm_vec"] for s in states])] if states[0]["gnorm_vec"] is not None else []
    layout = [v for i in range(len(params)) for v in (i, offs[i])]
    return (params, grads, lists["state1"], lists["state2"], lists["state3"], lists["absmax1"], lists["absmax2"],
            lists["absmax3"], states[0]["qmap1"], states[0]["qmap2"], lists["steps"], lists["gnorm_vecs"], h,
            block_wise, percentile, None, None, layout), lists, offs


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("fmt", FORMATS, ids=fmt_id)
def test_flat_layout_equals_one_tensor_per_parameter(device, fmt):
    """The optimizer's form (flat buffers + layout) gives the per-parameter form's results."""
    eight, amsgrad, block_wise, pct = fmt
    sizes = [1, 300, 4097, 0, 1000]
    params = [torch.randn(n, device=device) for n in sizes]
    states = [make_state(p, eight, amsgrad, block_wise, pct) for p in params]
    for s in states[1:]:
        s["qmap1"], s["qmap2"] = states[0]["qmap1"], states[0]["qmap2"]
    flat_params = [p.clone() for p in params]
    h = hyper(device, lr=1e-2)
    for _ in range(3):
        grads = [torch.randn(n, device=device) for n in sizes]
        args, lists, offs = flat_args(flat_params, grads, states, h, block_wise, pct)
        torch.ops.adamw8.fused_step_multi(*args)
        for p, g, s in zip(params, grads, states):
            torch.ops.adamw8.fused_step(*op_args(p, g, s, h, block_wise, pct))
        for i, (p, q, s) in enumerate(zip(params, flat_params, states)):
            assert torch.equal(p, q)
            assert torch.equal(s["state1"].reshape(-1), lists["state1"][0][offs[i]:offs[i] + p.numel()])
            assert lists["steps"][0][i] == s["step"]


def test_flat_layout_opcheck_and_bad_layouts():
    params = [torch.randn(n) for n in (300, 5)]
    states = [make_state(p, True, False) for p in params]
    states[1]["qmap1"], states[1]["qmap2"] = states[0]["qmap1"], states[0]["qmap2"]
    args, _, _ = flat_args(params, [torch.randn_like(p) for p in params], states, hyper("cpu"))
    torch.library.opcheck(torch.ops.adamw8.fused_step_multi.default, args)
    overlaps = (([0, 0, 0, 512], r"layout: params\[0\] and params\[1\] share slot 0"),
                ([0, 0, 1, 256], r"layout: params\[0\] \(elements \[0, 300\)\) and params\[1\] \(elements "
                                 r"\[256, 261\)\) overlap in the flat state buffers"))
    for layout, match in (([0, 0, 1, 100], "offset >= 0 that is a multiple of 256"),
                          ([0, 0], "layout must have 4 ints"),
                          ([0, 0, 1, 1024], r"state1: params\[1\] needs elements \[1024, 1029\)")) + overlaps:
        before = [t.clone() for t in args[2]] + [p.clone() for p in params]
        with pytest.raises(RuntimeError, match=match):
            torch.ops.adamw8.fused_step_multi(*args[:-1], layout)
        assert all(torch.equal(b, t) for b, t in zip(before, list(args[2]) + params))  # nothing written
    with FakeTensorMode() as mode:  # the fake kernel (torch.compile) refuses the same layouts
        fake = [[mode.from_tensor(t) for t in a] if isinstance(a, list) and a and isinstance(a[0], torch.Tensor)
                else mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args[:-1]]
        for layout, match in overlaps:
            with pytest.raises(RuntimeError, match=match):
                torch.ops.adamw8.fused_step_multi(*fake, layout)


def _multi_lists(params, states, h):
    """fused_step_multi's arguments in the list form (a tensor per parameter and state)."""
    def col(key):
        return [s[key] for s in states] if states[0][key] is not None else []
    return (params, [torch.randn_like(p) for p in params], col("state1"), col("state2"), col("state3"), col("absmax1"),
            col("absmax2"), col("absmax3"), states[0]["qmap1"], states[0]["qmap2"], [s["step"] for s in states], [], h)


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("eight", [True, False], ids=["8bit", "32bit"])
def test_tensors_shared_between_parameters_of_one_call_are_refused(device, eight):
    """One tensor in two slots of a call (the same parameter passed twice, one state for two
    parameters, overlapping views) would be written by two threads at once on the GPU, each
    from what it read.  Refused before anything is written, in both forms and in the fake
    kernel; views of one buffer that do not overlap pass."""
    buf = torch.randn(900, device=device)
    p = torch.randn(300, device=device)

    def states_for(params):
        ss = [make_state(q, eight, False) for q in params]
        for s in ss[1:]:
            s["qmap1"], s["qmap2"] = ss[0]["qmap1"], ss[0]["qmap2"]
        return ss

    share = r"the {} of params\[0\] and the {} of params\[1\] share memory \(the same tensor twice in one call\?\)"
    cases = [("same parameter", [p, p], None, share.format("parameter", "parameter")),
             ("overlapping views", [buf[:300], buf[200:500]], None, share.format("parameter", "parameter")),
             ("one state1", [p, torch.randn(300, device=device)], "state1", share.format("state1", "state1"))]
    for name, params, shared, match in cases:
        states = states_for(params)
        if shared:
            states[1][shared] = states[0][shared]
        args = _multi_lists(params, states, hyper(device))
        watched = [t for a in args for t in (a if isinstance(a, (list, tuple)) else [a])
                   if isinstance(t, torch.Tensor)]
        before = [t.clone() for t in watched]
        with pytest.raises(RuntimeError, match=match):
            torch.ops.adamw8.fused_step_multi(*args)
        assert all(torch.equal(b, t) for b, t in zip(before, watched)), name  # nothing written
        if name != "overlapping views":  # a fake tensor has no memory: only the same tensor twice is seen
            with FakeTensorMode() as mode:
                memo = {}
                fake = [[memo.setdefault(id(t), mode.from_tensor(t)) for t in a] if isinstance(a, list)
                        else memo.setdefault(id(a), mode.from_tensor(a)) if isinstance(a, torch.Tensor) else a
                        for a in args]
                with pytest.raises(RuntimeError, match=match):
                    torch.ops.adamw8.fused_step_multi(*fake)
    # the flat form (the optimizer's): the same parameter at two slots
    states = states_for([p, p])
    args, lists, _ = flat_args([p, p], [torch.randn_like(p)] * 2, states, hyper(device))
    before = p.clone()
    with pytest.raises(RuntimeError, match=share.format("parameter", "parameter")):
        torch.ops.adamw8.fused_step_multi(*args)
    assert torch.equal(p, before)
    with FakeTensorMode() as mode:
        memo = {}
        fake = [[memo.setdefault(id(t), mode.from_tensor(t)) for t in a] if isinstance(a, list) and a
                and isinstance(a[0], torch.Tensor) else memo.setdefault(id(a), mode.from_tensor(a))
                if isinstance(a, torch.Tensor) else a for a in args]
        with pytest.raises(RuntimeError, match=share.format("parameter", "parameter")):
            torch.ops.adamw8.fused_step_multi(*fake)
    # disjoint views of one buffer are separate parameters
    params = [buf[:300], buf[300:600], buf[600:]]
    torch.ops.adamw8.fused_step_multi(*_multi_lists(params, states_for(params), hyper(device)))
