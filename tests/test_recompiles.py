"""No recompiles in ordinary flows (torch.compile(opt.step, fullgraph=True), 50 steps each):
every torch LR scheduler, hyperparameters set by hand as floats, and add_param_group (one
recompile, then none).  Results equal the eager optimizer's, bit for bit."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

import adamw8

S = torch.optim.lr_scheduler
STEPS = 50


def model_and_opt(seed=0, **kw):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(32, 300), torch.nn.Tanh(), torch.nn.Linear(300, 4))
    opt = adamw8.AdamW8bit(model.parameters(), lr=3e-3, min_8bit_size=1000, **kw)
    return model, opt


SCHEDULERS = {
    "StepLR": lambda o: S.StepLR(o, step_size=3, gamma=0.7),
    "MultiStepLR": lambda o: S.MultiStepLR(o, milestones=[5, 20], gamma=0.5),
    "ConstantLR": lambda o: S.ConstantLR(o, factor=0.5, total_iters=10),
    "LinearLR": lambda o: S.LinearLR(o, start_factor=0.1, total_iters=20),
    "ExponentialLR": lambda o: S.ExponentialLR(o, gamma=0.95),
    "PolynomialLR": lambda o: S.PolynomialLR(o, total_iters=40, power=2.0),
    "CosineAnnealingLR": lambda o: S.CosineAnnealingLR(o, T_max=STEPS),
    "CosineAnnealingWarmRestarts": lambda o: S.CosineAnnealingWarmRestarts(o, T_0=7),
    "CyclicLR": lambda o: S.CyclicLR(o, base_lr=1e-4, max_lr=3e-3, step_size_up=5, cycle_momentum=True),
    "OneCycleLR-momentum": lambda o: S.OneCycleLR(o, max_lr=3e-3, total_steps=STEPS + 1, cycle_momentum=True),
    "LambdaLR": lambda o: S.LambdaLR(o, lambda i: 1.0 / (1 + i)),
    "MultiplicativeLR": lambda o: S.MultiplicativeLR(o, lambda i: 0.97),
    "SequentialLR-warmup": lambda o: S.SequentialLR(
        o, [S.LinearLR(o, start_factor=0.01, total_iters=10), S.CosineAnnealingLR(o, T_max=40)], milestones=[10]),
    "ChainedScheduler": lambda o: S.ChainedScheduler([S.ConstantLR(o, factor=0.5, total_iters=5),
                                                      S.ExponentialLR(o, gamma=0.97)]),
    "ReduceLROnPlateau": lambda o: S.ReduceLROnPlateau(o, factor=0.5, patience=1),
}


def run(model, opt, step_fn, steps, between=None):
    for i in range(steps):
        g = torch.Generator().manual_seed(i)
        x = torch.randn(8, 32, generator=g)
        opt.zero_grad(set_to_none=False)
        loss = model(x).square().mean()
        loss.backward()
        step_fn()
        if between is not None:
            between(i, loss.item())


def assert_same(m1, o1, m2, o2):
    for p, q in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p, q)
        for k, v in o1.state[p].items():
            assert torch.equal(v, o2.state[q][k]), k


@pytest.fixture
def fresh():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def compiled_and_eager(between_factory):
    """The same run eagerly and compiled; returns (eager, compiled) (model, opt) pairs."""
    out = []
    for compiled in (False, True):
        model, opt = model_and_opt()
        step = torch.compile(opt.step, fullgraph=True) if compiled else opt.step
        run(model, opt, step, STEPS, between_factory(opt))
        out.append((model, opt))
    return out


def recompiles() -> int:
    return counters["stats"]["unique_graphs"] - 1


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_no_recompiles_under_every_scheduler(name, fresh):
    def between(opt):
        sched = SCHEDULERS[name](opt)

        def f(i, loss):
            sched.step(loss) if name == "ReduceLROnPlateau" else sched.step()
        return f

    (m1, o1), (m2, o2) = compiled_and_eager(between)
    assert recompiles() == 0, dict(counters["stats"])
    assert sum(counters["graph_break"].values()) == 0
    assert_same(m1, o1, m2, o2)
    lrs = [g["lr"] for g in o2.param_groups]
    assert all(type(v) is float for v in lrs) and lrs == [g["lr"] for g in o1.param_groups]


def test_no_recompiles_when_values_are_set_by_hand(fresh):
    def between(opt):
        def f(i, loss):
            g = opt.param_groups[0]
            g["lr"] = 3e-3 / (1 + i)
            g["betas"] = (0.9 - 0.001 * i, 0.999)
            g["eps"] = 1e-8 * (1 + i)
            g["weight_decay"] = 0.01 * (i % 3)
        return f

    (m1, o1), (m2, o2) = compiled_and_eager(between)
    assert recompiles() == 0, dict(counters["stats"])
    assert_same(m1, o1, m2, o2)


def test_add_param_group_after_compiling_recompiles_once(fresh):
    model, opt = model_and_opt()
    step = torch.compile(opt.step, fullgraph=True)
    run(model, opt, step, 3)
    extra = torch.nn.Linear(4, 4)
    before = extra.weight.detach().clone()
    opt.add_param_group({"params": list(extra.parameters()), "lr": 1e-3})

    def between(i, loss):  # gradients for the next step (zero_grad keeps them as tensors)
        extra(torch.randn(2, 4)).sum().backward()

    between(-1, None)
    run(model, opt, step, STEPS, between)
    assert recompiles() == 1
    assert not torch.equal(extra.weight, before)
