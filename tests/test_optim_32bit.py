"""32-bit adamw8 optimizers against torch.optim.AdamW (docs/design.md, "The update": same math, fp32 rounding)."""

from __future__ import annotations

import pytest
import torch

import adamw8
from conftest import DTYPES, ODD_SIZES, TOL_VS_TORCH, device_params, dtype_id

STEPS = 25


def run_pair(params_a, params_b, opt_a, opt_b, steps=STEPS, grad_fn=None):
    """Step both optimizers with identical gradients; compare after every step.

    ``params_b`` are fp32 (torch.optim.AdamW's reference).  For bf16/fp16
    ``params_a`` the reference models docs/design.md, "The update"'s "updated in fp32 and rounded
    once": after each fp32 step its params are rounded to the half dtype."""
    for it in range(steps):
        for pa, pb in zip(params_a, params_b):
            g = grad_fn(pa, it) if grad_fn else torch.randn(pa.shape, device=pa.device).to(pa.dtype)
            pa.grad = g.clone()
            pb.grad = g.float()
        opt_a.step()
        opt_b.step()
        for pa, pb in zip(params_a, params_b):
            if pa.dtype != torch.float32:
                with torch.no_grad():
                    pb.copy_(pb.to(pa.dtype).float())
            torch.testing.assert_close(pa, pb.to(pa.dtype), **TOL_VS_TORCH[pa.dtype],
                                       msg=lambda m: f"step {it + 1}: {m}")


def clones(shapes, dtype, device):
    """Parameters of ``dtype`` and fp32 reference copies with the same values."""
    a = [torch.nn.Parameter(torch.randn(s, device=device).to(dtype)) for s in shapes]
    b = [torch.nn.Parameter(p.detach().float().clone()) for p in a]
    return a, b


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("amsgrad", [False, True], ids=["adam", "amsgrad"])
@pytest.mark.parametrize("cls", [adamw8.AdamW, adamw8.AdamW32bit, adamw8.PagedAdamW32bit],
                         ids=lambda c: c.__name__)
def test_matches_torch_adamw(device, dtype, amsgrad, cls):
    shapes = [(n,) for n in ODD_SIZES] + [(33, 65), (4, 1, 7)]
    a, b = clones(shapes, dtype, device)
    kw = dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-7, weight_decay=0.05, amsgrad=amsgrad)
    opt_a = cls(a, **kw)
    opt_b = torch.optim.AdamW(b, **kw, foreach=False)
    run_pair(a, b, opt_a, opt_b)


@pytest.mark.parametrize("device", device_params())
def test_non_contiguous_params(device):
    base_a = torch.randn(40, 70, device=device)
    base_b = base_a.clone()
    pa = torch.nn.Parameter(base_a.t())  # non-contiguous parameter
    pb = torch.nn.Parameter(base_b.t())
    assert not pa.is_contiguous()
    opt_a = adamw8.AdamW32bit([pa], lr=1e-2)
    opt_b = torch.optim.AdamW([pb], lr=1e-2, foreach=False)
    run_pair([pa], [pb], opt_a, opt_b, grad_fn=lambda p, it: torch.randn(40, 70, device=p.device).t())
    assert not pa.is_contiguous()


@pytest.mark.parametrize("device", device_params())
def test_param_groups_with_different_hyperparameters(device):
    shapes = [(300,), (17, 5), (1,), (4097,)]
    a, b = clones(shapes, torch.float32, device)
    groups = lambda ps: [  # noqa: E731
        {"params": ps[:2], "lr": 1e-2, "weight_decay": 0.0, "betas": (0.5, 0.9)},
        {"params": ps[2:3], "lr": 5e-4, "eps": 1e-3, "amsgrad": True},
        {"params": ps[3:]},
    ]
    opt_a = adamw8.AdamW(groups(a), lr=2e-3, weight_decay=0.2)
    opt_b = torch.optim.AdamW(groups(b), lr=2e-3, weight_decay=0.2, foreach=False)
    run_pair(a, b, opt_a, opt_b)


@pytest.mark.parametrize("device", device_params())
def test_params_without_grad_are_skipped(device):
    a, b = clones([(10,), (20,)], torch.float32, device)
    opt_a = adamw8.AdamW(a, lr=1e-2)
    opt_b = torch.optim.AdamW(b, lr=1e-2, foreach=False)
    for it in range(4):
        g = torch.randn(10, device=device)
        a[0].grad, b[0].grad = g.clone(), g.clone()
        if it % 2 == 0:  # the second parameter only gets a gradient every other step
            g2 = torch.randn(20, device=device)
            a[1].grad, b[1].grad = g2.clone(), g2.clone()
        else:
            a[1].grad = b[1].grad = None
        opt_a.step()
        opt_b.step()
        for pa, pb in zip(a, b):
            torch.testing.assert_close(pa, pb, **TOL_VS_TORCH[torch.float32])
    assert opt_a.state[a[1]]["step"].item() == 2 and opt_a.state[a[0]]["step"].item() == 4


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("lr", [1e-2, torch.tensor(1e-2)], ids=["float-lr", "tensor-lr"])
def test_lr_scheduler_follows_torch(device, lr):
    """group["lr"] is a plain number (a tensor lr is taken as its value), schedulers set it
    (OneCycleLR cycling beta1 too), and results follow torch's scheduled AdamW."""
    a, b = clones([(500,)], torch.float32, device)
    opt_a = adamw8.AdamW(a, lr=lr)
    opt_b = torch.optim.AdamW(b, lr=1e-2, foreach=False)
    assert type(opt_a.param_groups[0]["lr"]) is float
    sa = torch.optim.lr_scheduler.OneCycleLR(opt_a, max_lr=1e-2, total_steps=30)
    sb = torch.optim.lr_scheduler.OneCycleLR(opt_b, max_lr=1e-2, total_steps=30)
    for _ in range(25):
        g = torch.randn(500, device=device)
        a[0].grad, b[0].grad = g.clone(), g.clone()
        opt_a.step()
        opt_b.step()
        sa.step()
        sb.step()
        torch.testing.assert_close(a[0], b[0], **TOL_VS_TORCH[torch.float32])
    assert opt_a.param_groups[0]["lr"] == opt_b.param_groups[0]["lr"]
    assert opt_a.param_groups[0]["betas"] == opt_b.param_groups[0]["betas"]
    assert sa.get_last_lr() == sb.get_last_lr() and type(sa.get_last_lr()[0]) is float


def test_closure_returns_loss():
    p = torch.nn.Parameter(torch.randn(5))
    opt = adamw8.AdamW([p])

    def closure():
        opt.zero_grad()
        loss = (p**2).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor) and loss.item() > 0
    assert opt.state[p]["step"].item() == 1
