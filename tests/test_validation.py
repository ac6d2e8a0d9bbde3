"""Bad input fails with a clear error before any parameter or state changes."""

from __future__ import annotations

import copy
import math
import types

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import adamw8
from conftest import device_params, hyper, make_state, op_args

P = lambda: [torch.nn.Parameter(torch.randn(10))]  # noqa: E731

BAD_CTOR = [
    ("lr", dict(lr=-1e-3), ValueError, "lr: expected a value >= 0.0, got -0.001"),
    ("lr-type", dict(lr="0.1"), TypeError, "lr: expected a float or a 0-d tensor, got str"),
    ("lr-tensor-shape", dict(lr=torch.ones(2)), TypeError, "lr: expected a float or a one-element"),
    ("eps", dict(eps=-1.0), ValueError, "eps: expected a value"),
    ("beta1", dict(betas=(1.0, 0.999)), ValueError, r"betas\[0\]: expected a value in \[0.0, 1.0\)"),
    ("beta2", dict(betas=(0.9, -0.1)), ValueError, r"betas\[1\]"),
    ("betas-len", dict(betas=(0.9,)), TypeError, "betas: expected a tuple of two floats"),
    ("wd", dict(weight_decay=-0.1), ValueError, "weight_decay: expected a value"),
    ("nan-lr", dict(lr=float("nan")), ValueError, "lr: expected a value"),
    ("inf-lr", dict(lr=math.inf), ValueError, "lr: expected a finite value, got inf"),
    ("inf-wd", dict(weight_decay=math.inf), ValueError, "weight_decay: expected a finite value, got inf"),
    ("inf-eps", dict(eps=math.inf), ValueError, "eps: expected a finite value, got inf"),
    ("inf-lr-tensor", dict(lr=torch.tensor(math.inf)), ValueError, "lr: expected a finite value"),
    ("bits", dict(optim_bits=16), ValueError, "optim_bits: expected 8 or 32, got 16"),
    ("pct-0", dict(percentile_clipping=0), ValueError, r"percentile_clipping: expected an int in 1..100"),
    ("pct-101", dict(percentile_clipping=101), ValueError, "percentile_clipping"),
    ("pct-float", dict(percentile_clipping=50.0), ValueError, "percentile_clipping"),
    ("min8", dict(min_8bit_size=-1), ValueError, "min_8bit_size: expected an int >= 0"),
    ("block_wise", dict(block_wise=1), TypeError, "block_wise: expected a bool, got int"),
    ("amsgrad", dict(amsgrad="yes"), TypeError, "amsgrad: expected a bool"),
    ("is_paged", dict(is_paged=None), TypeError, "is_paged: expected a bool, got NoneType"),
    ("betas-type", dict(betas=0.9), TypeError, "betas: expected a tuple of two floats, got float"),
    ("eps-type", dict(eps=None), TypeError, "eps: expected a float or a 0-d tensor, got NoneType"),
    ("args", dict(args=types.SimpleNamespace(optim_bits=4)), ValueError, "optim_bits: expected 8 or 32, got 4"),
]


@pytest.mark.parametrize("name, kw, exc, match", BAD_CTOR, ids=[b[0] for b in BAD_CTOR])
def test_constructor_rejects(name, kw, exc, match):
    with pytest.raises(exc, match=match):
        adamw8.AdamW(P(), **kw)


def test_param_group_hyperparameters_are_checked():
    opt = adamw8.AdamW(P())
    with pytest.raises(ValueError, match="lr: expected"):
        opt.add_param_group({"params": P(), "lr": -1.0})
    with pytest.raises(TypeError, match="expected a dict with a 'params' entry"):
        opt.add_param_group({"lr": 1e-3})  # was a bare KeyError: 'params'
    with pytest.raises(TypeError, match="expected a dict with a 'params' entry"):
        opt.add_param_group(P())
    assert len(opt.param_groups) == 1


def test_rejects_non_float_params():
    with pytest.raises(TypeError, match=r"params\[0\]: expected a float32, bfloat16 or float16 tensor, got torch.int64"):
        adamw8.AdamW([torch.zeros(3, dtype=torch.long)])
    with pytest.raises(TypeError, match="complex64"):
        adamw8.AdamW([torch.nn.Parameter(torch.zeros(3, dtype=torch.complex64))])


def test_args_object_overrides_keywords():
    args = types.SimpleNamespace(optim_bits=8, min_8bit_size=0, percentile_clipping=50, block_wise=False)
    opt = adamw8.AdamW(P(), optim_bits=32, args=args)
    assert (opt.args.optim_bits, opt.args.min_8bit_size, opt.args.percentile_clipping, opt.args.block_wise) == (
        8, 0, 50, False)
    p = opt.param_groups[0]["params"][0]
    p.grad = torch.randn_like(p)
    opt.step()
    st = opt.state[p]
    assert st["state1"].dtype == torch.uint8 and st["absmax1"].shape == (1,) and "gnorm_vec" in st
    # the 8bit/32bit classes pin optim_bits whatever args says, and say so
    with pytest.warns(UserWarning, match=r"args.optim_bits=8 is ignored: this optimizer class fixes optim_bits=32"):
        assert adamw8.AdamW32bit(P(), args=args).args.optim_bits == 32
    with pytest.warns(UserWarning, match=r"args.optim_bits=32 is ignored"):
        assert adamw8.PagedAdamW8bit(P(), args=types.SimpleNamespace(optim_bits=32)).args.optim_bits == 8


@pytest.mark.parametrize("cls", [adamw8.AdamW8bit, adamw8.AdamW32bit, adamw8.PagedAdamW8bit, adamw8.PagedAdamW32bit],
                         ids=lambda c: c.__name__)
def test_fixed_classes_reject_an_invalid_optim_bits(cls):
    with pytest.raises(ValueError, match=r"optim_bits: expected 8 or 32 .*got 4"):
        cls(P(), optim_bits=4)
    cls(P(), optim_bits=32)  # bitsandbytes' default in their signature: accepted


def snapshot(params, opt):
    return [p.detach().clone() for p in params], copy.deepcopy(opt.state_dict())


def assert_unchanged(params, opt, snap):
    ps, sd = snap
    for p, q in zip(params, ps):
        assert torch.equal(p, q)
    now = opt.state_dict()
    for k, st in sd["state"].items():
        for key, v in st.items():
            assert torch.equal(v, now["state"][k][key]) if isinstance(v, torch.Tensor) else v == now["state"][k][key]


BAD_GRADS = [
    ("sparse", lambda p: torch.zeros_like(p).to_sparse(), RuntimeError, "expected a dense gradient"),
    ("dtype", lambda p: torch.randn(p.shape, dtype=torch.float64), TypeError, "gradient of dtype torch.float32"),
]


def _assign_grad(p, g):
    if g.dtype != p.dtype:
        if not hasattr(p, "grad_dtype"):
            pytest.skip("this torch refuses a gradient of another dtype itself")
        p.grad_dtype = None  # torch >= 2.13 lets a tensor hold a gradient of another dtype
    p.grad = g


@pytest.mark.parametrize("cls", [adamw8.AdamW32bit, adamw8.AdamW8bit], ids=["32bit", "8bit"])
@pytest.mark.parametrize("name, make_grad, exc, match", BAD_GRADS, ids=[b[0] for b in BAD_GRADS])
def test_bad_grad_changes_nothing(cls, name, make_grad, exc, match):
    """The bad gradient is on the *last* parameter of the *second* group: nothing of the
    first group may have been stepped when the error is raised."""
    params = [torch.nn.Parameter(torch.randn(5000)) for _ in range(3)]
    opt = cls([{"params": params[:2]}, {"params": params[2:]}], min_8bit_size=100)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    snap = snapshot(params, opt)
    for p in params[:2]:
        p.grad = torch.randn_like(p)
    _assign_grad(params[2], make_grad(params[2]))
    with pytest.raises(exc, match=match):
        opt.step()
    assert_unchanged(params, opt, snap)


def test_bad_grad_shape_changes_nothing():
    p = torch.nn.Parameter(torch.randn(100))
    opt = adamw8.AdamW8bit([p], min_8bit_size=0)
    p.grad = torch.randn(100)
    opt.step()
    snap = snapshot([p], opt)
    p.grad.set_(torch.randn(10, 10))  # torch refuses `p.grad = ...` of another shape; set_ gets past it
    with pytest.raises(RuntimeError, match=r"expected a gradient of shape \(100,\), got \(10, 10\)"):
        opt.step()
    assert_unchanged([p], opt, snap)


REPLACED = [
    # (id, the new data of the first parameter, the message's "now ... made for ...")
    ("grown", lambda: torch.randn(101), r"now torch.float32 \(101,\) on cpu, but its optimizer state was made for "
     r"torch.float32 \(100,\)"),
    ("reshaped", lambda: torch.randn(10, 10), r"now torch.float32 \(10, 10\) on cpu"),
    ("dtype", lambda: torch.randn(100).to(torch.bfloat16), r"now torch.bfloat16 \(100,\) on cpu, but its optimizer "
     r"state was made for torch.float32"),
]


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("cls", [adamw8.AdamW32bit, adamw8.AdamW8bit], ids=["32bit", "8bit"])
@pytest.mark.parametrize("name, data, match", REPLACED, ids=[r[0] for r in REPLACED])
def test_parameter_replaced_after_its_state_is_refused(name, data, match, cls, compiled):
    """``p.data = ...`` with another size or dtype once the state exists: torch.optim.AdamW fails
    on the size; here the first parameter's region of the flat buffers has room for 256
    elements, so without a check a grown parameter would step into the padding, or a
    neighbour's state, without a word."""
    params = [torch.nn.Parameter(torch.randn(100)), torch.nn.Parameter(torch.randn(300))]
    opt = cls(params, min_8bit_size=0)
    step = torch.compile(opt.step) if compiled else opt.step
    for p in params:
        p.grad = torch.randn_like(p)
    step()
    params[0].data = data()
    params[0].grad = torch.randn_like(params[0])
    params[1].grad = torch.randn_like(params[1])
    snap = snapshot(params, opt)
    with pytest.raises(RuntimeError, match=match):
        step()
    assert_unchanged(params, opt, snap)


def _op_cases(device):
    """(id, mutate the good arguments, expected message).  Each case breaks one argument."""
    def with_(i, value):
        return lambda a: a[:i] + (value,) + a[i + 1:]

    d = device
    return [
        ("grad-dtype", with_(1, torch.randn(4097, device=d, dtype=torch.float64)), "grad of param must have the parameter's dtype"),
        ("grad-shape", with_(1, torch.randn(4096, device=d)), r"grad of param must have shape \[4097\]"),
        ("grad-sparse", with_(1, torch.randn(4097, device=d).to_sparse()), "grad of param must be dense"),
        ("param-int", with_(0, torch.zeros(4097, device=d, dtype=torch.int32)), "param must be float32, bfloat16 or float16"),
        ("state2-dtype", with_(3, torch.zeros(4097, device=d)), "state2 of param must have state1's dtype"),
        ("state1-shape", with_(2, torch.zeros(4096, dtype=torch.uint8, device=d)), "state1 of param must have the parameter's shape"),
        ("state1-noncontig", with_(2, torch.zeros(2 * 4097, dtype=torch.uint8, device=d)[::2]),
         "state1 of param must be contiguous"),
        ("absmax-count", with_(5, torch.zeros(16, device=d)), r"absmax1 of param must be a contiguous float32 tensor of shape \[17\]"),
        ("absmax-missing", with_(6, None), "8-bit state of param needs absmax2, got None"),
        ("qmap-missing", with_(8, None), "8-bit state needs qmap1, got None"),
        ("qmap-shape", with_(9, torch.zeros(255, device=d)), r"qmap2 must be a contiguous float32 tensor of shape \[256\]"),
        ("qmap-order-value", with_(9, torch.ops.adamw8.create_dynamic_map(False).flip(0).to(d)),
         r"qmap must be sorted in ascending order, got qmap\[0\] = 1 > qmap\[1\]"),
        ("step-dtype", with_(10, torch.zeros((), dtype=torch.float32, device=d)), "step of param must be an int64 tensor"),
        ("hyper-shape", with_(12, torch.ones(4, device=d)), r"hyper must be a contiguous float32 tensor of shape \[5\]"),
        ("hyper-dtype", with_(12, hyper(d).double()), r"hyper must be a contiguous float32 tensor of shape \[5\]"),
        ("lr-value", with_(12, hyper(d, lr=-1.0)), "lr must be finite and >= 0"),
        ("lr-inf-value", with_(12, hyper(d, lr=math.inf)), "lr must be finite and >= 0, got inf"),
        ("beta1-value", with_(12, hyper(d, beta1=1.0)), r"beta1 must be in \[0, 1\)"),
        ("eps-value", with_(12, hyper(d, eps=-1.0)), "eps must be finite and >= 0"),
        ("eps-inf-value", with_(12, hyper(d, eps=math.inf)), "eps must be finite and >= 0, got inf"),
        ("wd-value", with_(12, hyper(d, wd=-1.0)), "weight_decay must be finite and >= 0"),
        ("wd-inf-value", with_(12, hyper(d, wd=math.inf)), "weight_decay must be finite and >= 0, got inf"),
        ("percentile", with_(14, 0), r"percentile must be in 1..100"),
        ("percentile-no-vec", with_(14, 90), r"percentile clipping \(percentile=90\) needs gnorm_vec"),
        ("gnorm-shape", lambda a: with_(14, 90)(with_(11, torch.zeros(99, device=d))(a)),
         r"gnorm_vec of param must be a contiguous float32 tensor of shape \[100\]"),
        ("state3-no-absmax3", with_(4, torch.zeros(4097, dtype=torch.uint8, device=d)),
         "8-bit state of param needs absmax3, got None"),
        ("absmax3-without-state3", with_(7, torch.zeros(17, device=d)), "absmax3 of param is only used with"),
        ("grad-scale-shape", lambda a: a + (torch.ones(2, device=d),), "grad_scale must be a float32 tensor with one"),
        ("found-inf-dtype", lambda a: a + (None, torch.zeros((), dtype=torch.bool, device=d)),
         "found_inf must be a float32 tensor"),
        ("grad-is-param", lambda a: (a[0], a[0]) + a[2:], "the parameter and the grad of param share memory"),
        ("state2-is-state1", lambda a: a[:3] + (a[2],) + a[4:], "the state1 and the state2 of param share memory"),
        ("absmax2-in-absmax1-partial", lambda a: a[:5] + _overlapping(34, 17, 10, d) + a[7:],
         "the absmax1 and the absmax2 of param share memory"),
    ]


def _overlapping(size, n, shift, device):
    """Two views of n elements of one buffer, the second `shift` elements on."""
    buf = torch.zeros(size, device=device)
    return buf[:n], buf[shift:shift + n]


N_OP_CASES = len(_op_cases("cpu"))


def _good_args(device):
    param = torch.randn(4097, device=device)
    s = make_state(param, True, False)
    return op_args(param, torch.randn(4097, device=device), s, hyper(device))


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("case", range(N_OP_CASES))
def test_op_rejects_bad_input_before_writing(device, case):
    name, mutate, match = _op_cases(device)[case]
    if name.endswith("-value") and device == "cuda":
        pytest.skip("values in device memory are not read by the CUDA kernels (that would synchronise); "
                    "the optimizer checks them where they are set")
    good = _good_args(device)
    args = mutate(good)
    watched = [a.clone() for a in args if isinstance(a, torch.Tensor) and a.layout == torch.strided]
    with pytest.raises(RuntimeError, match=match):
        torch.ops.adamw8.fused_step(*args)
    now = [a for a in args if isinstance(a, torch.Tensor) and a.layout == torch.strided]
    for before, after in zip(watched, now):
        assert torch.equal(before, after), name


@pytest.mark.parametrize("case", range(N_OP_CASES))
def test_fake_kernel_rejects_the_same(case):
    """The fake kernel (what torch.compile sees) makes the same checks."""
    name, mutate, match = _op_cases("cpu")[case]
    if name == "grad-sparse":
        pytest.skip("fake tensors of sparse layout are not needed: Dynamo never feeds them here")
    if name.endswith("-value"):
        pytest.skip("a fake tensor has no values to check")
    if name.endswith("-partial"):
        pytest.skip("a fake tensor has no memory: only the same tensor twice is seen")
    args = mutate(_good_args("cpu"))
    with FakeTensorMode(allow_non_fake_inputs=False) as mode:
        fake = tuple(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args)
        with pytest.raises(RuntimeError, match=match):
            torch.ops.adamw8.fused_step(*fake)


@pytest.mark.parametrize("device", device_params())
def test_multi_rejects_mixed_lists_before_writing(device):
    params = [torch.randn(300, device=device), torch.randn(300, device=device)]
    st = [make_state(params[0], True, False), make_state(params[1], False, False)]  # two formats in one call
    h = hyper(device, wd=0.0)
    before = [p.clone() for p in params]
    with pytest.raises(RuntimeError, match="one call takes one state format"):
        torch.ops.adamw8.fused_step_multi(
            params, [torch.randn(300, device=device)] * 2, [s["state1"] for s in st], [s["state2"] for s in st], [],
            [st[0]["absmax1"], torch.zeros(2, device=device)], [st[0]["absmax2"], torch.zeros(2, device=device)], [],
            st[0]["qmap1"], st[0]["qmap2"], [s["step"] for s in st], [], h)
    for p, b in zip(params, before):
        assert torch.equal(p, b)
    with pytest.raises(RuntimeError, match="grads must have 2 entries"):
        torch.ops.adamw8.fused_step_multi(params, params[:1], [], [], [], [], [], [], None, None, [], [], h)
