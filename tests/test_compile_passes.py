"""compile_passes: the grouping pass counts fused_step / fused_step_multi before and after (docs/design.md, "Compile")."""

from __future__ import annotations

import re

import pytest
import torch
from torch._dynamo.utils import counters
from torch._inductor.utils import run_and_get_code

import adamw8
from adamw8 import compile_passes
from conftest import clone_state, device_params, hyper, make_state


@pytest.fixture
def fresh():
    """A clean Dynamo and no FX graph cache, so every compile really runs the passes."""
    torch._dynamo.reset()
    counters.clear()
    with torch._inductor.config.patch(fx_graph_cache=False):
        yield
    compile_passes.uninstall()
    torch._dynamo.reset()


def per_param_loop(h):
    """A user's own optimizer: one fused_step per parameter (``h``: the hyper tensor)."""

    def step(params, grads, states):
        for p, g, s in zip(params, grads, states):
            torch.ops.adamw8.fused_step(p, g, s["state1"], s["state2"], s["state3"], s["absmax1"], s["absmax2"],
                                        s["absmax3"], s["qmap1"], s["qmap2"], s["step"], s["gnorm_vec"], h)

    return step


def setup(device, formats):
    sizes = [300, 5000, 1, 4097, 70, 2048]
    params = [torch.randn(n, device=device) for n in sizes]
    grads = [torch.randn_like(p) for p in params]
    states = [make_state(p, formats[i % len(formats)], False) for i, p in enumerate(params)]
    qm = states[[i for i in range(len(states)) if states[i]["qmap1"] is not None][0]] if True in formats else None
    if qm is not None:  # share one pair of maps, as the optimizer does
        for s in states:
            if s["qmap1"] is not None:
                s["qmap1"], s["qmap2"] = qm["qmap1"], qm["qmap2"]
    return params, grads, states


def count(code: str):
    return len(re.findall(r"adamw8\.fused_step\.default\(", code)), len(
        re.findall(r"adamw8\.fused_step_multi\.default\(", code))


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("formats", [(True,), (False,), (True, False)], ids=["8bit", "32bit", "mixed"])
def test_grouping_pass_counts_and_results(device, formats, fresh):
    params, grads, states = setup(device, formats)
    ref_params, ref_states = [p.clone() for p in params], [clone_state(s) for s in states]
    step = per_param_loop(hyper(device))

    # without the pass: one fused_step per parameter in the generated code
    _, code = run_and_get_code(torch.compile(step, fullgraph=True), [p.clone() for p in params], grads,
                               [clone_state(s) for s in states])
    assert count("\n".join(code)) == (6, 0)

    torch._dynamo.reset()
    the_pass = compile_passes.install()
    _, code = run_and_get_code(torch.compile(step, fullgraph=True), params, grads, states)
    code = "\n".join(code)
    n_formats = len(formats)
    assert count(code) == (0, n_formats), code  # one multi-tensor call per state format
    assert the_pass.stats == {"single_before": 6, "single_after": 0, "multi_created": n_formats}
    assert not re.search(r"\bclone\b|\.copy_\(", code)  # still reinplaced
    step(ref_params, grads, ref_states)  # eager reference: the same per-parameter calls
    for p, r in zip(params, ref_params):
        assert torch.equal(p, r)
    for s, r in zip(states, ref_states):
        for k, v in s.items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(v, r[k]), k


def test_calls_with_different_hyperparameters_stay_apart(fresh):
    params, grads, states = setup("cpu", (False,))
    h, h2, h3 = hyper("cpu"), hyper("cpu", lr=5e-3), hyper("cpu", wd=0.0)

    def step(ps, gs, ss):
        per_param_loop(h)(ps[:3], gs[:3], ss[:3])
        per_param_loop(h2)(ps[3:], gs[3:], ss[3:])  # another hyper tensor: another group
        per_param_loop(h3)(ps[:1], gs[:1], ss[:1])  # another one again, and p[0] again

    the_pass = compile_passes.install()
    _, code = run_and_get_code(torch.compile(step, fullgraph=True), params, grads, states)
    code = "\n".join(code)
    # groups: h (3 calls) and h2 (3 calls); the lone h3 call stays single
    assert count(code) == (1, 2), code
    assert the_pass.stats["multi_created"] == 2


def test_dependent_calls_are_not_grouped(fresh):
    """A call whose gradient is computed from an earlier call's result cannot move."""
    params, grads, states = setup("cpu", (False,))
    h = hyper("cpu")

    def step(ps, gs, ss):
        single = per_param_loop(h)
        single(ps[:1], gs[:1], ss[:1])
        g1 = gs[1] + ps[0][:1].sum()  # reads the first parameter after its update
        single(ps[1:2], [g1], ss[1:2])

    params_ref, states_ref = [p.clone() for p in params], [clone_state(s) for s in states]
    compile_passes.install()
    _, code = run_and_get_code(torch.compile(step, fullgraph=True), params, grads, states)
    assert count("\n".join(code)) == (2, 0)
    step(params_ref, grads, states_ref)
    assert torch.equal(params[1], params_ref[1])


def test_install_is_idempotent_and_uninstall_restores(fresh):
    import torch._inductor.config as ic

    before = ic.post_grad_custom_pre_pass
    p1 = compile_passes.install()
    p2 = compile_passes.install()
    assert p1 is p2 and compile_passes.installed()
    compile_passes.uninstall()
    assert ic.post_grad_custom_pre_pass is before and not compile_passes.installed()


def test_optimizer_step_unaffected(fresh):
    """The optimizer already makes multi-tensor calls; the pass leaves its graph as it is."""
    the_pass = compile_passes.install()
    model = torch.nn.Linear(64, 64)
    opt = adamw8.AdamW8bit(model.parameters(), min_8bit_size=100)
    model(torch.randn(2, 64)).sum().backward()
    torch.compile(opt.step, fullgraph=True)()
    assert the_pass.stats["single_before"] == 0


def test_large_groups_become_calls_of_32(fresh):
    params = [torch.randn(10) for _ in range(40)]
    grads = [torch.randn(10) for _ in range(40)]
    states = [make_state(p, False, False) for p in params]
    the_pass = compile_passes.install()
    _, code = run_and_get_code(torch.compile(per_param_loop(hyper("cpu")), fullgraph=True), params, grads, states)
    assert count("\n".join(code)) == (0, 2)
    assert the_pass.stats == {"single_before": 40, "single_after": 0, "multi_created": 2}
