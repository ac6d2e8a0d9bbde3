"""state_dict()/load_state_dict(): exact round trip, bnb layouts, clear errors (docs/design.md, "Checkpoints")."""

from __future__ import annotations

import copy
import pytest
import torch

import adamw8
from adamw8.optim.state_dict import BNB_NESTED_KEY
from conftest import device_params, torch_save_load

CONFIGS = [
    (adamw8.AdamW32bit, {}),
    (adamw8.AdamW8bit, {}),
    (adamw8.AdamW8bit, {"amsgrad": True, "percentile_clipping": 90}),
    (adamw8.AdamW8bit, {"block_wise": False}),
]
CONFIG_IDS = ["32bit", "8bit", "8bit-ams-clip", "8bit-tensorwise"]


def make(device, cls, kw, seed=0):
    torch.manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, device=device)) for s in [(5000,), (70, 80), (33,)]]
    return params, cls(params, lr=2e-3, min_8bit_size=1000, **kw)


def run(params, opt, steps, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g).to(p.device, p.dtype)
        opt.step()


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("cls, kw", CONFIGS, ids=CONFIG_IDS)
def test_round_trip_continues_bit_identically(device, cls, kw):
    params_a, opt_a = make(device, cls, kw)
    run(params_a, opt_a, 7, seed=1)
    sd = torch_save_load(opt_a.state_dict())
    params_b, opt_b = make(device, cls, kw, seed=99)
    with torch.no_grad():
        for pa, pb in zip(params_a, params_b):
            pb.copy_(pa)
    opt_b.load_state_dict(sd)
    run(params_a, opt_a, 5, seed=2)
    run(params_b, opt_b, 5, seed=2)
    for pa, pb in zip(params_a, params_b):
        assert torch.equal(pa, pb)
        for k, v in opt_a.state[pa].items():
            assert torch.equal(v, opt_b.state[pb][k]), k


def test_state_dict_format_is_bnb_like():
    params, opt = make("cpu", adamw8.AdamW8bit, {})
    run(params, opt, 3, seed=1)
    sd = opt.state_dict()
    st0, st2 = sd["state"][0], sd["state"][2]
    assert st0["step"] == 3 and isinstance(st0["step"], int)
    assert set(st0) == {"step", "state1", "state2", "qmap1", "qmap2", "absmax1", "absmax2"}
    assert st0["state1"].dtype == torch.uint8 and st0["state1"].shape == (5000,)
    assert st0["absmax1"].shape == (20,)  # ceil(5000 / 256)
    assert set(st2) == {"step", "state1", "state2"} and st2["state1"].dtype == torch.float32  # 33 < min_8bit_size
    assert isinstance(sd["param_groups"][0]["lr"], float)
    # the exported dict is a copy: training on does not change it ...
    snap = st0["step"]
    run(params, opt, 1, seed=3)
    assert sd["state"][0]["step"] == snap
    # ... and loading never aliases the dict's tensors
    opt.load_state_dict(sd)
    assert opt.state[params[0]]["state1"].data_ptr() != sd["state"][0]["state1"].data_ptr()


def test_loads_nested_bnb_layout():
    params_a, opt_a = make("cpu", adamw8.AdamW8bit, {})
    run(params_a, opt_a, 4, seed=1)
    sd = opt_a.state_dict()
    nested = copy.deepcopy(sd)
    for st in nested["state"].values():
        quant = {k: st.pop(k) for k in list(st) if k != "step"}
        st[BNB_NESTED_KEY] = quant
    params_b, opt_b = make("cpu", adamw8.AdamW8bit, {})
    opt_b.load_state_dict(nested)
    for pa, pb in zip(params_a, params_b):
        for k, v in opt_a.state[pa].items():
            assert torch.equal(v, opt_b.state[pb][k]), k


@pytest.mark.gpu
@pytest.mark.parametrize("cls, kw", CONFIGS, ids=CONFIG_IDS)
def test_cross_device_round_trip(cls, kw):
    """Saved on the GPU, loaded on the CPU and back: identical continuation."""
    params_g, opt_g = make("cuda", cls, kw)
    run(params_g, opt_g, 4, seed=1)
    params_c, opt_c = make("cpu", cls, kw)
    with torch.no_grad():
        for pg, pc in zip(params_g, params_c):
            pc.copy_(pg.cpu())
    opt_c.load_state_dict(opt_g.state_dict())
    assert opt_c.state[params_c[0]]["state1"].device.type == "cpu"
    params_g2, opt_g2 = make("cuda", cls, kw)
    with torch.no_grad():
        for pg, pc in zip(params_g2, params_c):
            pg.copy_(pc.cuda())
    opt_g2.load_state_dict(opt_c.state_dict())
    run(params_g, opt_g, 3, seed=2)
    run(params_g2, opt_g2, 3, seed=2)
    for a, b in zip(params_g, params_g2):
        assert torch.equal(a, b)


def _corrupt(sd, fn):
    sd = copy.deepcopy(sd)
    fn(sd)
    return sd


BAD = [
    ("groups", lambda sd: sd["param_groups"].append(dict(sd["param_groups"][0])), "parameter groups"),
    ("group-size", lambda sd: sd["param_groups"][0]["params"].pop(), "has 3 parameters"),
    ("shape", lambda sd: sd["state"][0].__setitem__("state1", torch.zeros(4999, dtype=torch.uint8)),
     r"state1 of the parameter's shape \(5000,\)"),
    ("dtype", lambda sd: sd["state"][0].__setitem__("state2", torch.zeros(5000)), "state2 of dtype torch.uint8"),
    ("blocks", lambda sd: sd["state"][0].__setitem__("absmax1", torch.zeros(19)), "absmax1 of dtype float32 with 20"),
    ("qmap", lambda sd: sd["state"][0]["qmap1"].mul_(2), "qmap1 is not bitsandbytes' signed dynamic map"),
    ("missing", lambda sd: sd["state"][1].pop("state2"), "expected a tensor for 'state2'"),
    ("step", lambda sd: sd["state"][1].__setitem__("step", -1), "non-negative whole 'step'"),
    ("lr", lambda sd: sd["param_groups"][0].__setitem__("lr", -1.0), "lr: expected a value"),
    ("not-dict", lambda sd: sd["state"].__setitem__(1, [1, 2]), "expected a dict of state"),
    ("unknown-id", lambda sd: sd["state"].__setitem__(17, {}), "parameter id 17, which no group lists"),
    ("state1-bf16", lambda sd: sd["state"][2].__setitem__("state1", torch.zeros(33, dtype=torch.bfloat16)),
     "float32 .32-bit. or uint8"),
]


@pytest.mark.parametrize("name, corrupt, match", BAD, ids=[b[0] for b in BAD])
def test_mismatched_checkpoint_fails_clearly_and_changes_nothing(name, corrupt, match):
    params, opt = make("cpu", adamw8.AdamW8bit, {})
    run(params, opt, 2, seed=1)
    good = opt.state_dict()
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(_corrupt(good, corrupt))
    after = opt.state_dict()
    assert after["param_groups"] == before["param_groups"]
    for k, st in before["state"].items():
        for key, v in st.items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(v, after["state"][k][key])
            else:
                assert v == after["state"][k][key]


def test_option_mismatches_fail_clearly():
    """Checkpoints that do not fit the optimizer's options: amsgrad without state3, a bad
    clipping history, per-tensor absmax for a blockwise optimizer."""
    params, plain = make("cpu", adamw8.AdamW8bit, {})
    run(params, plain, 2, seed=1)
    sd = plain.state_dict()
    _, ams = make("cpu", adamw8.AdamW8bit, {"amsgrad": True})
    no_key = copy.deepcopy(sd)
    del no_key["param_groups"][0]["amsgrad"]  # as in a bitsandbytes checkpoint: ours decides
    with pytest.raises(ValueError, match="uses amsgrad but the checkpoint has no 'state3'"):
        ams.load_state_dict(no_key)
    _, tensorwise = make("cpu", adamw8.AdamW8bit, {"block_wise": False})
    with pytest.raises(ValueError, match=r"absmax1 of dtype float32 with 1 values \(one per tensor"):
        tensorwise.load_state_dict(sd)
    params, clip = make("cpu", adamw8.AdamW8bit, {"percentile_clipping": 90})
    run(params, clip, 2, seed=1)
    bad = copy.deepcopy(clip.state_dict())
    bad["state"][0]["gnorm_vec"] = torch.zeros(5)
    with pytest.raises(ValueError, match="gnorm_vec as a float32 tensor of 100 values"):
        clip.load_state_dict(bad)
    for opt in (ams, tensorwise):  # nothing loaded: the state is still fresh
        assert all(int(st["step"]) == 0 and not st["state1"].any() for st in opt.state.values())


def test_missing_clip_history_never_clips_until_refilled():
    """A checkpoint without gnorm_vec (e.g. bitsandbytes >= 0.50) loads into a clipping
    optimizer with +inf history: no clipping until real norms fill the window."""
    params, plain = make("cpu", adamw8.AdamW8bit, {})
    run(params, plain, 3, seed=1)
    params2, clip = make("cpu", adamw8.AdamW8bit, {"percentile_clipping": 50})
    clip.load_state_dict(plain.state_dict())
    hist = clip.state[params2[0]]["gnorm_vec"]
    assert torch.isinf(hist).all()
    run(params2, clip, 3, seed=2)
    assert torch.isfinite(hist).sum() == 3 and torch.isinf(hist).sum() == 97


# ------------------------------------------------- torch.optim.AdamW checkpoints
def _torch_trained(amsgrad=False, dtype=torch.float32, steps=3, **kw):
    """Parameters of the make() shapes trained by torch.optim.AdamW, their checkpoint, and the
    optimizer (to go on with)."""
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s).to(dtype)) for s in [(5000,), (70, 80), (33,)]]
    opt = torch.optim.AdamW(params, lr=2e-3, amsgrad=amsgrad, foreach=False, **kw)
    run(params, opt, steps, seed=1)
    return params, opt


@pytest.mark.parametrize("amsgrad", [False, True], ids=["adam", "amsgrad"])
def test_loads_torch_adamw_checkpoint_into_32bit_and_goes_on_like_torch(amsgrad):
    """A torch.optim.AdamW checkpoint (exp_avg, exp_avg_sq, max_exp_avg_sq, a float step)
    loads into AdamW32bit, which then steps as torch does; torch's own group keys are dropped."""
    from conftest import TOL_VS_TORCH
    tparams, topt = _torch_trained(amsgrad)
    params, opt = make("cpu", adamw8.AdamW32bit, {"amsgrad": amsgrad})
    with torch.no_grad():
        for p, t in zip(params, tparams):
            p.copy_(t)
    opt.load_state_dict(topt.state_dict())
    assert set(opt.param_groups[0]) == {"params", "lr", "betas", "eps", "weight_decay", "amsgrad"}
    for p, t in zip(params, tparams):
        assert int(opt.state[p]["step"]) == 3
        assert torch.equal(opt.state[p]["state1"], topt.state[t]["exp_avg"])
        assert torch.equal(opt.state[p]["state2"], topt.state[t]["exp_avg_sq"])
    run(params, opt, 3, seed=2)
    run(tparams, topt, 3, seed=2)
    for p, t in zip(params, tparams):
        torch.testing.assert_close(p, t, **TOL_VS_TORCH[torch.float32])


@pytest.mark.parametrize("block_wise", [True, False], ids=["blockwise", "tensorwise"])
def test_loads_torch_adamw_checkpoint_into_8bit_state(block_wise):
    """Into AdamW8bit the moments are quantized with the optimizer's maps: the codes and absmax
    are the reference quantizer's of torch's fp32 moments; the small tensor (below
    min_8bit_size) keeps them in 32 bits; bf16 parameters' bf16 moments are widened first."""
    from adamw8.ops import reference as R
    for dtype in (torch.float32, torch.bfloat16):
        tparams, topt = _torch_trained(amsgrad=True, dtype=dtype)
        params = [torch.nn.Parameter(p.detach().clone()) for p in tparams]
        opt = adamw8.AdamW8bit(params, lr=2e-3, min_8bit_size=1000, amsgrad=True, block_wise=block_wise)
        opt.load_state_dict(topt.state_dict())
        qmap1, qmap2 = R.create_dynamic_map(True), R.create_dynamic_map(False)
        for p, t in zip(params[:2], tparams[:2]):
            st, ts = opt.state[p], topt.state[t]
            for name, key, qmap, signed in (("1", "exp_avg", qmap1, True), ("2", "exp_avg_sq", qmap2, False),
                                            ("3", "max_exp_avg_sq", qmap2, False)):
                codes, absmax = R.quantize(ts[key].float(), qmap, block_wise, signed)
                assert torch.equal(st["state" + name], codes), (dtype, key)
                assert torch.equal(st["absmax" + name], absmax), (dtype, key)
        small = opt.state[params[2]]
        assert small["state1"].dtype == torch.float32
        assert torch.equal(small["state1"], topt.state[tparams[2]]["exp_avg"].float())


def test_torch_checkpoints_that_do_not_fit_fail_clearly():
    """maximize, torch.optim.Adam's L2 weight decay, and amsgrad without max_exp_avg_sq are
    refused before anything changes; torch.optim.Adam without weight decay loads.  (A
    checkpoint's group values, amsgrad among them, replace the optimizer's, as in torch.)"""
    params, opt = make("cpu", adamw8.AdamW8bit, {})
    run(params, opt, 2, seed=1)
    before = copy.deepcopy(opt.state_dict())
    _, topt = _torch_trained(maximize=True)
    with pytest.raises(ValueError, match=r"param_groups\[0\]: the checkpoint maximizes"):
        opt.load_state_dict(topt.state_dict())
    tparams = [torch.nn.Parameter(p.detach().clone()) for p in params]
    adam = torch.optim.Adam(tparams, weight_decay=0.1)
    run(tparams, adam, 1, seed=1)
    with pytest.raises(ValueError, match="an L2 term"):
        opt.load_state_dict(adam.state_dict())
    _, topt = _torch_trained()
    sd = topt.state_dict()
    del sd["param_groups"][0]["amsgrad"]  # the optimizer's amsgrad then stays: max(v) is missing
    ams = adamw8.AdamW8bit(params, lr=2e-3, min_8bit_size=1000, amsgrad=True)
    with pytest.raises(ValueError, match="torch.optim.AdamW's max_exp_avg_sq"):
        ams.load_state_dict(sd)
    after = opt.state_dict()
    for k, st in before["state"].items():
        for key, v in st.items():
            now = after["state"][k][key]
            assert torch.equal(v, now) if isinstance(v, torch.Tensor) else v == now
    adam = torch.optim.Adam(tparams, weight_decay=0.0)
    run(tparams, adam, 1, seed=1)
    opt.load_state_dict(adam.state_dict())
    assert int(opt.state[params[0]]["step"]) == 1


def test_nonfinite_checkpoint_state_warns_and_the_step_resets_only_those_elements():
    """A checkpoint whose state holds NaN or inf loads with one warning naming where, and the
    next step applies the non-finite rule to exactly those elements (moments reset, parameter
    kept: for a NaN absmax, its whole 256-element block); every other element steps as from the
    clean checkpoint, bit for bit.  A clean checkpoint loads without the warning."""
    import warnings

    params, opt = make("cpu", adamw8.AdamW8bit, {})
    run(params, opt, 2, seed=1)
    clean = opt.state_dict()
    bad = copy.deepcopy(clean)
    bad["state"][0]["absmax1"][3] = float("nan")  # 8-bit (5000 elements): block 3
    bad["state"][2]["state2"][5] = float("inf")  # 32-bit (33 elements, under min_8bit_size)

    def loaded(sd):
        ps = [torch.nn.Parameter(p.detach().clone()) for p in params]
        o = adamw8.AdamW8bit(ps, lr=2e-3, min_8bit_size=1000)
        o.load_state_dict(sd)
        return ps, o

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        twin_params, twin = loaded(clean)
    assert not [w for w in caught if "NaN or inf" in str(w.message)]
    with pytest.warns(RuntimeWarning, match=r"NaN or inf for 2 parameter\(s\) \(first: param_groups\[0\]\['params'\]\[0\], "
                                            r"absmax1: 1 of 20 values\)"):
        bad_params, bad_opt = loaded(bad)
    before = [p.detach().clone() for p in bad_params]
    run(bad_params, bad_opt, 1, seed=3)
    run(twin_params, twin, 1, seed=3)
    kept = [torch.zeros(p.numel(), dtype=torch.bool) for p in params]
    kept[0][3 * 256:4 * 256] = True
    kept[2][5] = True
    for p, t, b, k in zip(bad_params, twin_params, before, kept):
        p, t, b = p.detach().reshape(-1), t.detach().reshape(-1), b.reshape(-1)
        assert torch.equal(p[k], b[k])  # kept
        assert torch.equal(p[~k], t[~k])  # as from the clean checkpoint
        assert not torch.equal(t[k], b[k]) or not k.any()  # the clean twin did move them
    assert torch.isfinite(bad_opt.state[bad_params[0]]["absmax1"]).all()
    assert torch.isfinite(bad_opt.state[bad_params[2]]["state2"]).all()
