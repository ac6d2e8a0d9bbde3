"""Reliability: non-finite gradients, failed steps, copies, checkpoints at any step, damaged
checkpoints, long runs, and property tests of the 8-bit format against brute force."""

from __future__ import annotations

import copy
import io
import pickle
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as hs

import adamw8
from adamw8.ops import reference as R
from conftest import hyper, make_state, op_args, torch_save_load

CLASSES = [adamw8.AdamW, adamw8.AdamW8bit, adamw8.AdamW32bit, adamw8.PagedAdamW, adamw8.PagedAdamW8bit,
           adamw8.PagedAdamW32bit]
FORMATS = {  # name -> constructor keywords (min_8bit_size=1000: the small tensors keep 32-bit state)
    "8bit": dict(optim_bits=8, min_8bit_size=1000),
    "8bit-ams": dict(optim_bits=8, min_8bit_size=1000, amsgrad=True),
    "8bit-tensorwise-clip": dict(optim_bits=8, min_8bit_size=1000, block_wise=False, percentile_clipping=90),
    "32bit": dict(optim_bits=32),
    "32bit-ams": dict(optim_bits=32, amsgrad=True),
}


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(40, 64), torch.nn.Tanh(), torch.nn.Linear(64, 3))


def batch(i):
    g = torch.Generator().manual_seed(i)
    x = torch.randn(16, 40, generator=g)
    return x, x[:, :3].sin()


def train(model, opt, steps, start=0):
    for i in range(start, start + steps):
        x, y = batch(i)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def all_finite(model, opt) -> bool:
    tensors = list(model.parameters()) + [t for s in opt.state.values() for t in s.values() if torch.is_tensor(t)]
    return all(torch.isfinite(t.float()).all() for t in tensors if t.dtype != torch.int64)


def same(a_model, a_opt, b_model, b_opt) -> bool:
    if not all(torch.equal(p, q) for p, q in zip(a_model.parameters(), b_model.parameters())):
        return False
    for p, q in zip(a_model.parameters(), b_model.parameters()):
        for k, v in a_opt.state[p].items():
            if torch.is_tensor(v) and not torch.equal(v, b_opt.state[q][k]):
                return False
    return True


# ---------------------------------------------------------------- non-finite gradients
@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), 3e19], ids=["nan", "inf", "-inf", "sq-overflow"])
def test_nonfinite_gradient_elements_never_reach_params_or_state(fmt, bad):
    """One policy for every tensor of every optimizer, whatever its state format: the bad
    element keeps its parameter, its moments reset, everything else steps normally."""
    model = tiny_model()
    opt = adamw8.AdamW(model.parameters(), lr=1e-2, **FORMATS[fmt])
    train(model, opt, 3)
    x, y = batch(99)
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    w, b = model[0].weight, model[2].bias  # an 8-bit-state tensor (2560) and a 32-bit one (3)
    w.grad[1, 2] = bad
    b.grad[1] = bad
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()
    assert (w != before[0]).float().mean() > 0.99
    assert all_finite(model, opt)
    if bad == 3e19 and "clip" in fmt:
        return  # clipping scales a huge finite gradient back into range: a normal step
    assert w[1, 2] == before[0][1, 2] and b[1] == before[3][1]
    for p, idx in ((w, (1, 2)), (b, (1,))):
        st = opt.state[p]
        if st["state1"].dtype == torch.uint8:
            m = R.dequantize(st["state1"], st["absmax1"], st["qmap1"], FORMATS[fmt].get("block_wise", True))
            assert m[idx] == 0
        else:
            assert st["state1"][idx] == 0 and st["state2"][idx] == 0


# ------------------------------------------------------------------ failed steps
def test_a_failing_step_changes_nothing():
    """A bad gradient of the last parameter fails the step before any group is updated; a bad
    value set by hand in the last group fails where it is set, and is not kept."""
    model = tiny_model()
    opt = adamw8.AdamW8bit([{"params": list(model[0].parameters())}, {"params": list(model[2].parameters())}],
                           min_8bit_size=1000)
    train(model, opt, 2)
    x, y = batch(5)
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    snap = copy.deepcopy((list(model.parameters()), opt.state_dict()))
    good = model[2].bias.grad
    model[2].bias.grad = good.to_sparse()  # a sparse gradient, last parameter
    with pytest.raises(RuntimeError, match=r"param_groups\[1\]\['params'\]\[1\]: expected a dense gradient"):
        opt.step()
    model[2].bias.grad = good
    with pytest.raises(ValueError, match=r"eps: expected a value >= 0"):
        opt.param_groups[1]["eps"] = -1.0  # a bad value in the last group: refused where it is set
    assert opt.param_groups[1]["eps"] == 1e-8
    for p, q in zip(model.parameters(), snap[0]):
        assert torch.equal(p, q)
    now = opt.state_dict()
    for k, st in snap[1]["state"].items():
        for name, v in st.items():
            assert (torch.equal(v, now["state"][k][name]) if torch.is_tensor(v) else v == now["state"][k][name])


# ------------------------------------------------------------------------ copies
@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copies_step_identically(cls, how):
    model = tiny_model()
    opt = cls(model.parameters(), lr=1e-2, min_8bit_size=1000)
    train(model, opt, 3)
    # copy the model and its optimizer together, so the copy's params are the copy's keys
    pair = copy.deepcopy((model, opt)) if how == "deepcopy" else pickle.loads(pickle.dumps((model, opt)))
    train(model, opt, 4, start=3)
    train(*pair, 4, start=3)
    assert same(model, opt, *pair)


def test_meta_parameters_fail_at_construction():
    with torch.device("meta"):
        model = tiny_model()
    with pytest.raises(ValueError, match=r"params\[0\]: expected a materialised parameter, got one on the meta device"):
        adamw8.AdamW8bit(model.parameters())


def test_state_dict_post_hook_keys_survive():
    model = tiny_model()
    opt = adamw8.AdamW8bit(model.parameters(), min_8bit_size=1000)
    train(model, opt, 1)

    def hook(optimizer, sd):
        sd["trainer_info"] = {"epoch": 3}
        sd["state"][0]["note"] = "kept"

    opt.register_state_dict_post_hook(hook)
    sd = opt.state_dict()
    assert sd["trainer_info"] == {"epoch": 3} and sd["state"][0]["note"] == "kept"


def test_step_count_is_exact_past_2_24():
    """A float32 count stops at 2^24; the int64 one goes on, and the bias corrections follow."""
    model = tiny_model()
    opt = adamw8.AdamW8bit(model.parameters(), min_8bit_size=1000)
    train(model, opt, 1)
    sd = opt.state_dict()
    for st in sd["state"].values():
        st["step"] = 2**24 + 1
    opt.load_state_dict(sd)
    train(model, opt, 3, start=1)
    assert all(int(st["step"]) == 2**24 + 4 for st in opt.state.values())


# ------------------------------------------------------------------ checkpoints
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_checkpoint_at_random_steps_continues_bit_identically(fmt):
    rng = random.Random(fmt)
    model = tiny_model()
    opt = adamw8.AdamW(model.parameters(), lr=1e-2, **FORMATS[fmt])
    for _ in range(3):
        at = rng.randint(1, 6)
        train(model, opt, at)
        twin = tiny_model(seed=1)
        twin.load_state_dict(model.state_dict())
        twin_opt = adamw8.AdamW(twin.parameters(), lr=1e-2, **FORMATS[fmt])
        twin_opt.load_state_dict(torch_save_load(opt.state_dict()))
        train(model, opt, 3, start=at)
        train(twin, twin_opt, 3, start=at)
        assert same(model, opt, twin, twin_opt)


def _damaged(sd, what):
    sd = copy.deepcopy(sd)
    st = sd["state"][0]
    if what == "truncated-state1":
        st["state1"] = st["state1"].reshape(-1)[:-5]
    elif what == "missing-absmax":
        del st["absmax2"]
    elif what == "wrong-block-count":
        st["absmax1"] = st["absmax1"][:-1]
    elif what == "missing-group":
        sd["param_groups"] = sd["param_groups"][:0]
    elif what == "corrupt-step":
        st["step"] = -3
    elif what == "wrong-dtype":
        st["state2"] = st["state2"].float()
    elif what == "not-a-map":
        st["qmap1"] = torch.linspace(-1, 1, 256)
    elif what == "truncated-bytes":
        buf = io.BytesIO()
        torch.save(sd, buf)
        return buf.getvalue()[: len(buf.getvalue()) // 2]
    return sd


@pytest.mark.parametrize("what", ["truncated-state1", "missing-absmax", "wrong-block-count", "missing-group",
                                  "corrupt-step", "wrong-dtype", "not-a-map", "truncated-bytes"])
def test_damaged_checkpoints_fail_clearly_and_change_nothing(what):
    model = tiny_model()
    opt = adamw8.AdamW8bit(model.parameters(), min_8bit_size=1000)
    train(model, opt, 2)
    bad = _damaged(opt.state_dict(), what)
    before = copy.deepcopy(opt.state_dict())
    if isinstance(bad, bytes):  # a file cut short fails in torch.load, before the optimizer sees it
        with pytest.raises(Exception):
            torch.load(io.BytesIO(bad), weights_only=True)
        return
    with pytest.raises(ValueError, match=r"load_state_dict"):
        opt.load_state_dict(bad)
    after = opt.state_dict()
    for k, st in before["state"].items():
        for name, v in st.items():
            assert torch.equal(v, after["state"][k][name]) if torch.is_tensor(v) else v == after["state"][k][name]


# ---------------------------------------------------------------------- long runs
@pytest.mark.slow
@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("fmt", ["default", "8bit-ams", "8bit-tensorwise-clip"])
def test_a_thousand_steps_stay_finite(cls, fmt):
    kw = {} if fmt == "default" else {k: v for k, v in FORMATS[fmt].items() if k != "optim_bits"}
    model = tiny_model()
    opt = cls(model.parameters(), lr=3e-3, **kw)
    x, y = batch(0)
    first = torch.nn.functional.mse_loss(model(x), y).item()
    train(model, opt, 1000)
    assert all_finite(model, opt)
    assert torch.nn.functional.mse_loss(model(x), y).item() < first  # it trained


# ----------------------------------------------------------------- property tests
finite32 = hs.floats(min_value=-1.0000000150474662e30, max_value=1.0000000150474662e30, allow_nan=False,
                     allow_infinity=False, width=32)


def brute_force_nearest(x: torch.Tensor, qmap: torch.Tensor) -> torch.Tensor:
    d = (x.double()[:, None] - qmap.double()[None, :]).abs()
    return d.argmin(dim=1)  # the first of equal distances: ties to the lower code


@settings(max_examples=200, deadline=None)
@given(hs.lists(hs.floats(min_value=-1.0, max_value=1.0, allow_nan=False, width=32), min_size=1, max_size=300))
def test_nearest_code_rule_is_brute_force_nearest(values):
    """The kernels' code for x/absmax is the nearest map entry (before the sign fix), with
    absmax 1 so the normalised value is the value itself."""
    q = torch.ops.adamw8.create_dynamic_map(True)
    x = torch.tensor(values + [1.0], dtype=torch.float32)
    codes, absmax = torch.ops.adamw8.quantize(x, q, False, True)
    assert absmax.item() == 1.0
    want = brute_force_nearest(x, q)
    sign_ok = torch.signbit(q[want]) == torch.signbit(x)  # the sign fix moves only the others
    assert torch.equal(codes.long()[sign_ok], want[sign_ok])
    assert ((codes.long() - want).abs() <= 1).all()


@settings(max_examples=150, deadline=None)
@given(hs.lists(finite32, min_size=0, max_size=700), hs.booleans(), hs.booleans())
def test_quantize_round_trip(values, signed, block_wise):
    """dequantize(quantize(x)) is within half a code step of x (relative to its block's absmax),
    keeps every sign (signed), never turns a positive value into 0 (unsigned), and the kernel
    equals the reference."""
    q = torch.ops.adamw8.create_dynamic_map(signed)
    x = torch.tensor(values, dtype=torch.float32)
    if not signed:
        x = x.abs()
    codes, absmax = torch.ops.adamw8.quantize(x, q, block_wise, signed)
    ref = R.quantize(x, q, block_wise, signed)
    assert torch.equal(codes, ref[0]) and torch.equal(absmax, ref[1])
    back = torch.ops.adamw8.dequantize(codes, absmax, q, block_wise)
    if x.numel() == 0:
        return
    scale = absmax.repeat_interleave(R.block_len(x.numel(), block_wise))[: x.numel()]
    c = codes.long()
    gap = torch.maximum(q[(c + 1).clamp(max=255)] - q[c], q[c] - q[(c - 1).clamp(min=0)])
    assert ((back - x).abs() <= gap * scale + 1e-6 * scale + 1e-30).all()
    if signed:
        assert (torch.signbit(back) == torch.signbit(x))[x != 0].all()
    else:
        assert (back[x > 0] > 0).all()


# ------------------------------------------------------------------ frozen parameters
def _frozen_model(seed=0):
    """A model whose first layer is frozen (an adapter-style fine-tune handing the optimizer
    every parameter)."""
    model = tiny_model(seed)
    model[0].requires_grad_(False)
    return model


def _reference_step(model, ref_params, states):
    """Steps the reference copies of the parameters that have a gradient; a parameter's state
    is made (zeros) at its first gradient, as torch.optim.AdamW makes it."""
    for p, q in zip(model.parameters(), ref_params):
        if p.grad is None:
            continue
        if q not in states:
            states[q] = make_state(q, states["eight"], amsgrad=False)
        R.fused_step_reference(*op_args(q, p.grad, states[q], hyper(q.device)))


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("cls", [adamw8.AdamW32bit, adamw8.AdamW8bit], ids=["32bit", "8bit"])
def test_frozen_parameters_get_state_at_their_first_gradient(cls, compiled):
    """A frozen parameter has no state (no memory) until it has a gradient, then starts from
    zero state like torch's: every step equals the reference, bit for bit.  A compiled step
    with fullgraph cannot make state: it says so, one eager step makes it, and compiled steps
    go on from there."""
    model = _frozen_model()
    ref = [p.detach().clone() for p in model.parameters()]
    states = {"eight": cls is adamw8.AdamW8bit}
    opt = cls(model.parameters(), min_8bit_size=0)
    frozen = list(model[0].parameters())
    assert all(p not in opt.state for p in frozen)
    assert sorted(opt.state_dict()["state"]) == [2, 3]  # torch's numbering: model[2]'s weight and bias
    state_bytes = sum(t.numel() * t.element_size() for b in opt._buckets for ts in b.buffers.values() for t in ts)
    assert state_bytes < sum(p.numel() for p in model[2].parameters()) * 4 + 4096  # model[2]'s only
    step = torch.compile(opt.step, fullgraph=True) if compiled else opt.step
    for i in range(6):
        if i == 3:
            model[0].requires_grad_(True)
        x, y = batch(i)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        if compiled and i == 3:
            with pytest.raises(Exception, match=r"param_groups\[0\]\['params'\]\[0\] was frozen"):
                step()
            opt.step()
        else:
            step()
        _reference_step(model, ref, states)
        for k, (p, q) in enumerate(zip(model.parameters(), ref)):
            assert torch.equal(p, q), f"step {i + 1}, parameter {k}"
    for p, q in zip(model.parameters(), ref):
        assert int(opt.state[p]["step"]) == int(states[q]["step"])
        for key in ("state1", "state2"):
            assert torch.equal(opt.state[p][key], states[q][key])
    assert int(opt.state[frozen[0]]["step"]) == 3


def test_frozen_parameters_against_torch_adamw():
    """The same schedule of freezing against torch.optim.AdamW itself (32-bit state)."""
    a, b = _frozen_model(), _frozen_model()
    opt_a = adamw8.AdamW32bit(a.parameters(), lr=3e-3)
    opt_b = torch.optim.AdamW(b.parameters(), lr=3e-3, foreach=False)
    for i in range(6):
        if i == 3:
            a[0].requires_grad_(True)
            b[0].requires_grad_(True)
        for model, opt in ((a, opt_a), (b, opt_b)):
            x, y = batch(i)
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
        assert sorted(opt_a.state_dict()["state"]) == sorted(opt_b.state_dict()["state"])
        for p, q in zip(a.parameters(), b.parameters()):
            torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)


def test_frozen_parameters_in_checkpoints_copies_and_overrides(manager):
    """No state entry for a frozen parameter in a checkpoint; loading one that has state for it
    gives it that state; deepcopy keeps it stateless; an override registered for it applies
    when its state is made."""
    model = _frozen_model()
    opt = adamw8.AdamW8bit(model.parameters(), min_8bit_size=0)
    train(model, opt, 2)
    assert sorted(opt.state_dict()["state"]) == [2, 3]
    twin = copy.deepcopy((model, opt))
    assert all(p not in twin[1].state for p in twin[0][0].parameters())
    manager.override_config(model[0].weight, "optim_bits", 32)
    model[0].requires_grad_(True)
    train(model, opt, 1, start=2)
    assert opt.state[model[0].weight]["state1"].dtype == torch.float32  # the override's format
    assert opt.state[model[0].bias]["state1"].dtype == torch.uint8
    sd = opt.state_dict()
    assert sorted(sd["state"]) == [0, 1, 2, 3]
    fresh = _frozen_model()
    opt2 = adamw8.AdamW8bit(fresh.parameters(), min_8bit_size=0)
    opt2.load_state_dict(sd)  # state for model[0] in the checkpoint: loaded, though it is frozen
    assert torch.equal(opt2.state[fresh[0].bias]["state1"], opt.state[model[0].bias]["state1"])


@pytest.mark.parametrize("cls", [adamw8.AdamW32bit, adamw8.AdamW8bit], ids=["32bit", "8bit"])
def test_parameter_listed_twice_in_a_group_steps_once(cls):
    """torch warns about a parameter listed twice in one group; here it has one state and one
    update a step (two would race in one multi-tensor launch), equal to the reference's."""
    p = torch.nn.Parameter(torch.randn(5000))
    q = p.detach().clone()
    with pytest.warns(UserWarning, match="duplicate parameters"):
        opt = cls([p, p], min_8bit_size=0)
    st = make_state(q, cls is adamw8.AdamW8bit, amsgrad=False)
    for _ in range(3):
        p.grad = torch.randn(5000)
        opt.step()
        R.fused_step_reference(*op_args(q, p.grad, st, hyper(q.device)))
        assert torch.equal(p, q)
    assert int(opt.state[p]["step"]) == 3
    assert list(opt.state_dict()["state"]) == [1]  # torch's numbering: the last position of p
