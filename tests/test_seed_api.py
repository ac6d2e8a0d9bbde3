"""The rest of the seed API: percentile clipping, GlobalOptimManager, AMP (docs/design.md: "Validation", "Percentile clipping")."""

from __future__ import annotations

import math

import pytest
import torch

import adamw8
from conftest import TOL_VS_TORCH, device_params


class PlainPercentileClipper:
    """docs/design.md, "Percentile clipping" written out independently: 100 squared norms, first step fills all slots,
    slot t % 100 afterwards, clip at sqrt(sorted(history)[percentile])."""

    def __init__(self, percentile: int):
        self.percentile = percentile
        self.history = [0.0] * 100

    def scale(self, grad: torch.Tensor, t: int) -> float:
        gn2 = float(torch.tensor(float((grad.double() ** 2).sum()), dtype=torch.float32))
        if t == 1:
            self.history = [gn2] * 100
        else:
            self.history[t % 100] = gn2
        clip = math.sqrt(sorted(self.history)[self.percentile])
        current = math.sqrt(self.history[t % 100])
        return clip / current if current > clip else 1.0


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("percentile", [5, 50, 95])
def test_percentile_clipping_against_plain_reference(device, percentile):
    """160 steps: the first-step fill, the wrap-around at 100, and spikes that get clipped.
    torch.optim.AdamW fed the plainly clipped gradient is the reference."""
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(3000, device=device))
    q = torch.nn.Parameter(p.detach().clone())
    opt = adamw8.AdamW32bit([p], lr=1e-2, percentile_clipping=percentile)
    ref = torch.optim.AdamW([q], lr=1e-2, foreach=False)
    clipper = PlainPercentileClipper(percentile)
    clipped = 0
    for t in range(1, 161):
        g = torch.randn(3000, device=device) * (0.5 + (t % 7) / 7)
        if t in (20, 120, 121):
            g = g * 50.0  # spikes
        s = clipper.scale(g.cpu(), t)
        clipped += s < 1.0
        if t in (20, 120):
            assert s < 0.1, "a spike must be clipped"
        p.grad, q.grad = g.clone(), g * s
        opt.step()
        ref.step()
        torch.testing.assert_close(p, q, **TOL_VS_TORCH[torch.float32], msg=lambda m: f"step {t}: {m}")
        hist = opt.state[p]["gnorm_vec"].cpu()
        torch.testing.assert_close(hist, torch.tensor(clipper.history, dtype=torch.float32), rtol=1e-6, atol=0)
        if t == 1:
            assert (hist == hist[0]).all()
    assert clipped > 0


@pytest.mark.parametrize("device", device_params())
def test_percentile_clipping_8bit(device):
    """Clipping happens before the moments in the 8-bit path too: a clipped spike moves the
    parameter no more than an ordinary step does."""
    p = torch.nn.Parameter(torch.randn(4096, device=device))
    opt = adamw8.AdamW8bit([p], lr=1e-3, percentile_clipping=90, weight_decay=0.0)
    for _ in range(30):
        p.grad = torch.randn(4096, device=device)
        opt.step()
    before = p.detach().clone()
    p.grad = torch.randn(4096, device=device) * 1e4
    opt.step()
    assert (p - before).abs().max() < 5e-3


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(1000, 64)
        self.fc1 = torch.nn.Linear(64, 256)
        self.fc2 = torch.nn.Linear(256, 64)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(self.emb(x))))


def _step(model, opt, steps=3):
    torch.manual_seed(5)
    for _ in range(steps):
        model(torch.randint(0, 1000, (8, 4))).square().mean().backward()
        opt.step()
        opt.zero_grad()


def test_embedding_kept_in_32bit(manager):
    model = Net()
    manager.register_parameters(model.parameters())
    manager.override_config(model.emb.weight, "optim_bits", 32)
    opt = adamw8.AdamW8bit(model.parameters(), min_8bit_size=1000)
    _step(model, opt)
    assert opt.state[model.emb.weight]["state1"].dtype == torch.float32
    assert "absmax1" not in opt.state[model.emb.weight]
    assert opt.state[model.fc1.weight]["state1"].dtype == torch.uint8
    assert opt.state[model.fc2.weight]["state1"].dtype == torch.uint8


def test_module_override_wins(manager):
    model = Net()
    manager.override_config(model.fc1.weight, key_value_dict={"optim_bits": 8, "block_wise": False})
    manager.register_module_override(model.fc1, "weight", {"optim_bits": 32})
    opt = adamw8.AdamW8bit(model.parameters(), min_8bit_size=1000)
    _step(model, opt, 1)
    assert opt.state[model.fc1.weight]["state1"].dtype == torch.float32  # module override replaces the rest


def test_index_override_from_register_parameters(manager):
    """bnb's flow: override, register by (group, index); overrides follow the index."""
    model = Net()
    manager.override_config(model.fc2.weight, "block_wise", False)
    manager.register_parameters(model.parameters())
    assert (0, 3) in manager.index2config
    opt = adamw8.AdamW8bit(model.parameters(), min_8bit_size=1000)
    _step(model, opt, 1)
    assert opt.state[model.fc2.weight]["absmax1"].shape == (1,)
    assert opt.state[model.fc1.weight]["absmax1"].shape == (64,)


def test_hyperparameter_override_is_used(manager):
    """An lr/betas/weight_decay override steps that parameter like its own torch group."""
    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(500)) for _ in range(2)]
    b = [torch.nn.Parameter(x.detach().clone()) for x in a]
    manager.override_config(a[1], key_value_dict={"lr": 1e-2, "betas": (0.5, 0.9), "weight_decay": 0.3})
    opt = adamw8.AdamW32bit(a, lr=1e-3)
    ref = torch.optim.AdamW([{"params": [b[0]]}, {"params": [b[1]], "lr": 1e-2, "betas": (0.5, 0.9),
                                                  "weight_decay": 0.3}], lr=1e-3, foreach=False)
    for _ in range(10):
        for x, y in zip(a, b):
            g = torch.randn(500)
            x.grad, y.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, **TOL_VS_TORCH[torch.float32])


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda m, p: m.override_config(p, "optim_bits", 7), ValueError, "optim_bits: expected 8 or 32, got 7"),
        (lambda m, p: m.override_config(p, "lr", -1.0), ValueError, "lr: expected a value >= 0.0"),
        (lambda m, p: m.override_config(p, "colour", 1), ValueError, "override key: expected one of"),
        (lambda m, p: m.override_config(p), ValueError, "expected key and value"),
        (lambda m, p: m.override_config([1.0], "lr", 1.0), TypeError, "expected tensors"),
        (lambda m, p: m.override_config(3, "optim_bits", 32), TypeError, "a parameter or an iterable of them, got int"),
        (lambda m, p: m.register_module_override(torch.nn.Linear(2, 2), "nope", {}), ValueError, "has no tensor"),
    ],
    ids=["bits", "lr", "key", "empty", "not-tensor", "not-iterable", "module-attr"],
)
def test_manager_rejects_bad_overrides(manager, call, exc, match):
    with pytest.raises(exc, match=match):
        call(manager, torch.nn.Parameter(torch.zeros(3)))
    assert manager.pid2config == {} and manager.module_weight_config_triple == []


def test_manager_is_a_singleton(manager):
    assert adamw8.GlobalOptimManager.get_instance() is manager
    with pytest.raises(RuntimeError, match="get_instance"):
        adamw8.GlobalOptimManager()


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("cls", [adamw8.AdamW32bit, adamw8.AdamW8bit], ids=["32bit", "8bit"])
def test_grad_scaler_unscales_and_skips_in_kernel(device, cls):
    """GradScaler drives the step through grad_scale/found_inf: the result equals the unscaled
    step, and an injected inf skips the whole step (params, state and step count unchanged)."""
    torch.manual_seed(0)
    model_a = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.Linear(128, 8)).to(device)
    model_b = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.Linear(128, 8)).to(device)
    model_b.load_state_dict(model_a.state_dict())
    opt_a = cls(model_a.parameters(), lr=1e-3, min_8bit_size=1000)
    opt_b = cls(model_b.parameters(), lr=1e-3, min_8bit_size=1000)
    scaler = torch.amp.GradScaler(device, init_scale=2.0**12, growth_interval=1000)
    assert opt_a._step_supports_amp_scaling
    for it in range(6):
        x = torch.randn(16, 64, device=device)
        with torch.autocast(device, dtype=torch.bfloat16):
            loss_a = model_a(x).float().square().mean()
        scaler.scale(loss_a).backward()
        with torch.autocast(device, dtype=torch.bfloat16):
            loss_b = model_b(x).float().square().mean()
        loss_b.backward()
        if it == 3:  # inject an inf: the scaled step must be skipped entirely
            next(model_a.parameters()).grad[0, 0] = float("inf")
            snap = {k: v.clone() for k, v in opt_a.state[next(model_a.parameters())].items()}
            params = [p.detach().clone() for p in model_a.parameters()]
            scale_before = scaler.get_scale()
            scaler.step(opt_a)
            scaler.update()
            for p, q in zip(model_a.parameters(), params):
                assert torch.equal(p, q)
            for k, v in opt_a.state[next(model_a.parameters())].items():
                assert torch.equal(v, snap[k]), k
            assert scaler.get_scale() == scale_before / 2
            opt_b.zero_grad()
        else:
            scaler.step(opt_a)
            scaler.update()
            opt_b.step()
            for p, q in zip(model_a.parameters(), model_b.parameters()):
                torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)  # power-of-two scales divide exactly
            opt_b.zero_grad()
        opt_a.zero_grad()
    assert opt_a.state[next(model_a.parameters())]["step"].item() == 5


def test_hyperparameters_are_numbers_and_reach_the_device_tensor():
    """group values are plain numbers for the user (json-able, not aliased by loggers); the
    kernels read one device tensor per group, written in place when a value is set (no
    allocation per step, and a graph captured around step() reads the same tensor)."""
    import json

    p = torch.nn.Parameter(torch.randn(300))
    opt = adamw8.AdamW8bit([p], lr=torch.tensor(1e-3), betas=(0.9, 0.99), min_8bit_size=1)
    g = opt.param_groups[0]
    assert type(g["lr"]) is float and type(g["betas"][0]) is float
    json.dumps({k: v for k, v in g.items() if k != "params"})
    t = opt._buckets[0].hyper
    log = [g["lr"]]
    g["lr"] = 2e-3
    g["betas"] = (0.8, 0.99)
    g["eps"] = 1e-6
    g["weight_decay"] = 0.5
    assert log == [float(torch.tensor(1e-3))]  # a logged value is not aliased
    assert opt._buckets[0].hyper is t
    assert torch.equal(t, torch.tensor([2e-3, 0.8, 0.99, 1e-6, 0.5]))
    with pytest.raises(ValueError, match=r"eps: expected a value >= 0.0, got -1.0"):
        g["eps"] = -1.0
    assert g["eps"] == 1e-6 and t[3] == torch.tensor(1e-6)


def test_every_dict_writer_of_a_group_reaches_the_device_tensor():
    """update, setdefault and |= go through the same check and device write as group[k] = v
    (dict's own versions skip __setitem__: the group said one lr while the kernels used
    another); the keys the kernels read cannot be removed; a value float32 cannot hold is
    refused where it is set."""
    p = torch.nn.Parameter(torch.randn(300))
    opt = adamw8.AdamW8bit([p], lr=1e-3, min_8bit_size=1)
    g, t = opt.param_groups[0], opt._buckets[0].hyper
    g.update(lr=2e-3)
    g.update({"weight_decay": 0.25})
    g |= {"eps": 1e-6}
    assert g.setdefault("betas", (0.5, 0.5)) == (0.9, 0.999)
    assert g.setdefault("initial_lr", 7e-4) == 7e-4  # what torch's LR schedulers do
    assert torch.equal(t, torch.tensor([2e-3, 0.9, 0.999, 1e-6, 0.25]))
    with pytest.raises(ValueError, match=r"lr: expected a value >= 0.0, got -1.0"):
        g.update(lr=-1.0)
    with pytest.raises(ValueError, match=r"lr: expected a value float32 can hold .*got 1e\+40"):
        g["lr"] = 1e40
    with pytest.raises(ValueError, match="float32 can hold"):
        adamw8.AdamW8bit([p], weight_decay=-1e39)
    with pytest.raises(ValueError, match=r"lr: expected a finite value, got inf"):
        g["lr"] = float("inf")  # a scheduler's overflow: refused where it is set
    for remove in (lambda: g.pop("lr"), lambda: g.__delitem__("betas"), g.clear, g.popitem):
        with pytest.raises(KeyError, match="kernels read"):
            remove()
    assert g.pop("initial_lr") == 7e-4 and g["lr"] == 2e-3
    assert torch.equal(t, torch.tensor([2e-3, 0.9, 0.999, 1e-6, 0.25]))


@pytest.mark.gpu
def test_hyper_tensor_lives_on_the_parameters_device():
    p = torch.nn.Parameter(torch.randn(300, device="cuda"))
    opt = adamw8.AdamW8bit([p], lr=torch.tensor(1e-3), min_8bit_size=1)
    t = opt._buckets[0].hyper
    assert t.device.type == "cuda" and t.dtype == torch.float32
    p.grad = torch.randn_like(p)
    opt.step()
    opt.param_groups[0]["lr"] = 5e-4
    assert opt._buckets[0].hyper is t and t[0].item() == pytest.approx(5e-4)


def test_group_params_set_by_hand_join_and_leave():
    """group["params"] = [...] re-packs the group: a new parameter is stepped from zero state
    (the reference's), the ones that stay keep theirs, one that leaves loses its state; a bad
    list or a parameter of another group is refused and changes nothing."""
    from adamw8.ops import reference as R
    from conftest import hyper, make_state, op_args

    torch.manual_seed(0)
    a, b, c = (torch.nn.Parameter(torch.randn(n)) for n in (5000, 300, 700))
    opt = adamw8.AdamW8bit([{"params": [a, b]}, {"params": [torch.nn.Parameter(torch.randn(10))]}], min_8bit_size=0)
    twin_a = torch.nn.Parameter(a.detach().clone())
    twin = adamw8.AdamW8bit([twin_a], min_8bit_size=0)
    for p in (a, b, twin_a):
        p.grad = torch.ones_like(p)
    opt.step()
    twin.step()
    g = opt.param_groups[0]
    with pytest.raises(TypeError, match=r"params\[1\]: expected a float32"):
        g["params"] = [a, torch.zeros(3, dtype=torch.int64)]
    with pytest.raises(ValueError, match="more than one parameter group"):
        g["params"] = [a, opt.param_groups[1]["params"][0]]
    with pytest.raises(TypeError, match="amsgrad: expected a bool"):
        g["amsgrad"] = "yes"
    assert g["params"] == [a, b] and g["amsgrad"] is False
    g["params"] = [a, c]  # b leaves, c joins
    assert b not in opt.state and int(opt.state[c]["step"]) == 0
    ref_c = c.detach().clone()
    st = make_state(ref_c, True, False)
    for _ in range(2):
        for p in (a, c, twin_a):
            p.grad = torch.randn_like(p)
        twin_a.grad = a.grad.clone()
        opt.step()
        twin.step()
        R.fused_step_reference(*op_args(ref_c, c.grad, st, hyper("cpu")))
    assert torch.equal(a, twin_a) and torch.equal(c, ref_c)
    assert torch.equal(opt.state[c]["state1"], st["state1"])
    assert sorted(opt.state_dict()["state"]) == [0, 1, 2]


def test_param_groups_changed_by_hand_are_taken_in():
    """torch's optimizers read param_groups at every step, so code replaces a group by a dict,
    appends one or deletes one; the next step takes the list as it is (checked as
    add_param_group checks a group) and steps as an optimizer given those groups by the API
    does.  A bad group is refused at that step and changes nothing.  (A compiled step reads
    only the buckets: an eager step takes new groups in.)"""
    torch.manual_seed(0)
    a, b = torch.nn.Parameter(torch.randn(5000)), torch.nn.Parameter(torch.randn(300))
    ta, tb = (torch.nn.Parameter(x.detach().clone()) for x in (a, b))
    opt = adamw8.AdamW8bit([a], min_8bit_size=0)
    twin = adamw8.AdamW8bit([ta], min_8bit_size=0)

    def step_both():
        for p, q in ((a, ta), (b, tb)):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        opt.step()
        twin.step()
        assert torch.equal(a, ta) and torch.equal(b, tb)

    step_both()
    opt.param_groups[0] = {**opt.param_groups[0], "lr": 0.1}
    twin.param_groups[0]["lr"] = 0.1
    step_both()
    opt.param_groups.append({"params": [b], "lr": 0.01})  # the defaults fill in the rest
    twin.add_param_group({"params": [tb], "lr": 0.01})
    step_both()
    assert int(opt.state[b]["step"]) == 1 and opt.param_groups[1]["betas"] == (0.9, 0.999)
    del opt.param_groups[1]
    step_both_before = b.detach().clone()
    opt.step()
    assert b not in opt.state and torch.equal(b, step_both_before)  # left every group: not stepped
    assert sorted(opt.state_dict()["state"]) == [0]
    snap = a.detach().clone(), opt.state[a]["state1"].clone()
    opt.param_groups[0] = {**opt.param_groups[0], "lr": -1.0}
    with pytest.raises(ValueError, match=r"param_groups\[0\]: lr: expected a value >= 0.0"):
        opt.step()
    opt.param_groups[0] = {**opt.param_groups[0], "lr": 1e-3}
    opt.param_groups.append({"params": [a]})
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.step()
    assert torch.equal(a, snap[0]) and torch.equal(opt.state[a]["state1"], snap[1])
    opt.param_groups[:] = [opt.param_groups[0]]
    opt.step()  # taken in by an eager step; compiled steps go on from there
    twin_a = torch.nn.Parameter(a.detach().clone())
    twin = adamw8.AdamW8bit([twin_a], min_8bit_size=0)
    twin.load_state_dict(opt.state_dict())
    step = torch.compile(opt.step, fullgraph=True)
    for _ in range(2):
        a.grad = torch.randn_like(a)
        twin_a.grad = a.grad.clone()
        step()
        twin.step()
    assert torch.equal(a, twin_a)


def test_a_tensor_lr_is_taken_as_its_value_with_a_warning():
    """A tensor lr becomes the group's number; a later in-place change to the user's tensor
    is not seen, so each place a user hands one over says so (construction, add_param_group,
    group["lr"] = tensor), and the step keeps following group["lr"], as the reference does."""
    from adamw8.ops import reference as R
    from conftest import hyper, make_state, op_args

    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(300))
    lr = torch.tensor(1e-2)
    with pytest.warns(UserWarning, match=r"lr was given as a tensor.*in-place change to that tensor"):
        opt = adamw8.AdamW32bit([p], lr=lr, weight_decay=0.0)
    assert type(opt.param_groups[0]["lr"]) is float
    q, s = p.detach().clone(), make_state(p.detach(), False, False)
    for value in (None, 5e-2):  # the user's tensor changed in place, then group["lr"] set
        if value is not None:
            lr.fill_(0.5)  # not seen: the group keeps its number
            opt.param_groups[0]["lr"] = value
        g = torch.randn(300)
        p.grad = g.clone()
        opt.step()
        R.fused_step_reference(*op_args(q, g, s, hyper("cpu", lr=value or 1e-2, wd=0.0)))
        assert torch.equal(p.detach(), q)
    with pytest.warns(UserWarning, match="lr was given as a tensor"):
        opt.param_groups[0]["lr"] = torch.tensor(1e-3)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3) and type(opt.param_groups[0]["lr"]) is float
    with pytest.warns(UserWarning, match="lr was given as a tensor"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.randn(3))], "lr": torch.tensor(2e-3)})
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a float lr says nothing
        adamw8.AdamW32bit([torch.nn.Parameter(torch.randn(3))], lr=1e-3)


def test_the_manager_holds_nothing_alive(manager):
    """An override of a parameter is forgotten when the parameter dies (bnb keys it by id(p) for
    good, so a later tensor at the same address inherited it), and a module override keeps no
    module, nor its weight, alive (bnb's list kept them for the life of the process)."""
    import gc
    import weakref

    p = torch.nn.Parameter(torch.zeros(10))
    keep = torch.nn.Parameter(torch.zeros(10))
    manager.override_config([p, keep], "optim_bits", 32)
    assert set(manager.pid2config) == {id(p), id(keep)}
    dead = id(p)
    del p
    gc.collect()
    assert set(manager.pid2config) == {id(keep)} and dead not in manager.pid2config
    assert manager.overrides_for(0, 0, keep) == {"optim_bits": 32}

    emb = torch.nn.Embedding(1000, 64)
    weight = weakref.ref(emb.weight)
    manager.register_module_override(emb, "weight", {"optim_bits": 32})
    assert manager.module_weight_config_triple == [(emb, "weight", {"optim_bits": 32})]
    assert manager.overrides_for(0, 0, emb.weight) == {"optim_bits": 32}
    opt = adamw8.AdamW8bit(emb.parameters(), min_8bit_size=0)
    assert opt.state[emb.weight]["state1"].dtype == torch.float32  # the override is applied
    del emb, opt
    gc.collect()
    assert weight() is None  # the manager kept neither the module nor its weight
    assert manager.module_weight_config_triple == []
