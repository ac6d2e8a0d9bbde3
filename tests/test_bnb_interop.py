"""Checkpoint interchange with bitsandbytes (docs/design.md, "Checkpoints"): its state dicts load into adamw8 and back.

Uses the real bitsandbytes package (its CPU optimizers, >= 0.50) and is skipped without it.
bitsandbytes' CPU 8-bit path does not round to the nearest code (docs/design.md), so it is a
state-format oracle here: codes and absmax must arrive unchanged, training must go on, and
the two continue within the distance their different rounding allows.
"""

from __future__ import annotations

import copy
import pytest
import torch

import adamw8
from adamw8.optim.state_dict import BNB_NESTED_KEY
from conftest import torch_save_load

bnb = pytest.importorskip("bitsandbytes")

PAIRS = [
    (bnb.optim.AdamW8bit, adamw8.AdamW8bit, torch.uint8),
    (bnb.optim.AdamW32bit, adamw8.AdamW32bit, torch.float32),
]
IDS = ["8bit", "32bit"]
KW = dict(lr=1e-3, weight_decay=0.0, min_8bit_size=1000)


def model_pair():
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(64, 300), torch.nn.ReLU(), torch.nn.Linear(300, 64))
    b = copy.deepcopy(a)
    return a, b


def train(model, opt, steps, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(16, 64, generator=g)
        model(x).square().mean().backward()
        opt.step()
        opt.zero_grad()


def flatten_bnb(sd):
    """bitsandbytes < 0.49.2 layout: quantization state beside step, not nested."""
    sd = copy.deepcopy(sd)
    for st in sd["state"].values():
        st.update(st.pop(BNB_NESTED_KEY, {}))
    return sd


@pytest.mark.parametrize("layout", ["nested", "flat"])
@pytest.mark.parametrize("bnb_cls, our_cls, sdtype", PAIRS, ids=IDS)
def test_bnb_checkpoint_loads_and_training_goes_on(bnb_cls, our_cls, sdtype, layout):
    src, dst = model_pair()
    bopt = bnb_cls(src.parameters(), **KW)
    train(src, bopt, 5, seed=1)
    sd = torch_save_load(bopt.state_dict())
    if sdtype == torch.uint8:
        assert BNB_NESTED_KEY in sd["state"][0]  # bitsandbytes >= 0.49.2 nests
    if layout == "flat":
        sd = flatten_bnb(sd)
    dst.load_state_dict(src.state_dict())
    ours = our_cls(dst.parameters(), **KW)
    ours.load_state_dict(sd)
    bnb_state = flatten_bnb(bopt.state_dict())["state"]
    for i, p in enumerate(dst.parameters()):
        st = ours.state[p]
        assert st["step"].item() == 5
        for k, v in bnb_state[i].items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(st[k].cpu(), v.cpu()), k  # codes, absmax, maps arrive unchanged
    assert ours.state[next(dst.parameters())]["state1"].dtype == sdtype
    train(src, bopt, 5, seed=2)
    train(dst, ours, 5, seed=2)
    for a, b in zip(src.parameters(), dst.parameters()):
        assert torch.isfinite(b).all()
        torch.testing.assert_close(b, a, atol=2e-4, rtol=0)  # rounding differs (see module doc)


@pytest.mark.parametrize("bnb_cls, our_cls, sdtype", PAIRS, ids=IDS)
def test_adamw8_checkpoint_loads_into_bnb(bnb_cls, our_cls, sdtype):
    src, dst = model_pair()
    ours = our_cls(src.parameters(), **KW)
    train(src, ours, 5, seed=1)
    sd = torch_save_load(ours.state_dict())
    dst.load_state_dict(src.state_dict())
    bopt = bnb_cls(dst.parameters(), **KW)
    bopt.load_state_dict(sd)
    for i, (p, q) in enumerate(zip(src.parameters(), dst.parameters())):
        for k, v in ours.state[p].items():
            got = bopt.state[q][k]
            if isinstance(v, torch.Tensor) and k != "step":
                assert torch.equal(got, v), k
        assert int(bopt.state[q]["step"]) == 5
    train(src, ours, 5, seed=2)
    train(dst, bopt, 5, seed=2)
    for a, b in zip(src.parameters(), dst.parameters()):
        torch.testing.assert_close(b, a, atol=2e-4, rtol=0)


def test_bnb_checkpoint_of_another_model_fails_clearly():
    src = torch.nn.Linear(64, 300)
    bopt = bnb.optim.AdamW8bit(src.parameters(), min_8bit_size=1000)
    src(torch.randn(4, 64)).sum().backward()
    bopt.step()
    other = torch.nn.Linear(64, 299)
    ours = adamw8.AdamW8bit(other.parameters(), min_8bit_size=1000)
    with pytest.raises(ValueError, match=r"state1 of the parameter's shape \(299, 64\), got \(300, 64\)"):
        ours.load_state_dict(bopt.state_dict())
    assert all(int(st["step"]) == 0 and not st["state1"].any() for st in ours.state.values())  # still fresh
