"""The CUDA kernels' own source, run on the CPU (csrc/emu/cuda_emu.h: one std::thread per
CUDA thread), against the CPU kernels, bit for bit.  No GPU needed: this is how a kernel
reaches the GPU already known to be correct.  The emulation cannot show races, launch
limits, CUDA's pow/division, streams or speed; tests/test_cuda.py and scripts/gpu_check.sh
cover those on a GPU."""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile

import pytest
import torch

from adamw8.ops import reference as R
from conftest import DTYPES, bits, crowded_map, dtype_id

ROOT = pathlib.Path(__file__).resolve().parents[1]
# the extension's floating-point rules (setup.py); hidden symbols keep two builds apart
FLAGS = ["-O2", "-std=c++20", "-ffp-contract=off", "-fopenmp", "-fvisibility=hidden"]


def _build(name: str, src_dir: pathlib.Path, defines: tuple[str, ...] = ()) -> None:
    from torch.utils.cpp_extension import load

    load(name=name, sources=[str(src_dir / "emu" / "emu_ops.cpp")],
         extra_cflags=FLAGS + [f"-DADAMW8_EMU_NS={name}", *defines], extra_ldflags=["-fopenmp"],
         is_python_module=False, verbose=False)


@pytest.fixture(scope="module")
def emu():
    _build("adamw8_emu", ROOT / "csrc")
    return torch.ops.adamw8_emu


# ------------------------------------------------------------------------ inputs
def make_params(dtype, sizes, device="cpu"):
    """Parameters of the given sizes; a size given as (rows, cols, "t") is a transposed
    (non-contiguous) view, ("off", n) a contiguous view at a 1-element offset (unaligned)."""
    out = []
    for s in sizes:
        if isinstance(s, tuple) and s[-1] == "t":
            out.append(torch.randn(s[1], s[0]).to(dtype).t())
        elif isinstance(s, tuple) and s[0] == "off":
            out.append(torch.randn(s[1] + 1).to(dtype)[1:])
        else:
            out.append(torch.randn(s).to(dtype))
    return out


def make_lists(params, eight, ams, block_wise=True, clip=False):
    st = {k: [] for k in ("state1", "state2", "state3", "absmax1", "absmax2", "absmax3", "steps", "gnorm")}
    sd = torch.uint8 if eight else torch.float32
    for p in params:
        st["state1"].append(torch.zeros(p.shape, dtype=sd))
        st["state2"].append(torch.zeros(p.shape, dtype=sd))
        if ams:
            st["state3"].append(torch.zeros(p.shape, dtype=sd))
        if eight:
            nb = R.num_blocks(p.numel(), block_wise)
            for k in ("absmax1", "absmax2") + (("absmax3",) if ams else ()):
                st[k].append(torch.zeros(nb))
        st["steps"].append(torch.zeros((), dtype=torch.int64))
        if clip:
            st["gnorm"].append(torch.zeros(100))
    return st


def clone_all(params, st):
    return [p.clone() if p.is_contiguous() else p.t().clone().t() if p.dim() == 2 else p.clone() for p in params], {
        k: [t.clone() for t in v] for k, v in st.items()
    }


def call(op, params, grads, st, eight, block_wise, percentile, lr, gs=None, fi=None, extra=(), maps=None):
    q1 = (maps[0] if maps else torch.ops.adamw8.create_dynamic_map(True)) if eight else None
    q2 = (maps[1] if maps else torch.ops.adamw8.create_dynamic_map(False)) if eight else None
    h = torch.tensor([lr, 0.9, 0.999, 1e-8, 0.05])  # lr, beta1, beta2, eps, weight_decay
    op(params, grads, st["state1"], st["state2"], st["state3"], st["absmax1"], st["absmax2"], st["absmax3"], q1, q2,
       st["steps"], st["gnorm"], h, block_wise, percentile, gs, fi, *extra)


def assert_same(a_params, a_st, b_params, b_st, what=""):
    for i, (x, y) in enumerate(zip(a_params, b_params)):
        assert torch.equal(bits(x), bits(y)), f"{what}param {i} differs at {(x != y).nonzero()[:5].tolist()}"
    for k in a_st:
        for i, (x, y) in enumerate(zip(a_st[k], b_st[k])):
            assert torch.equal(bits(x), bits(y)), f"{what}{k}[{i}] differs"


def run_both(emu_op, dtype, sizes, eight, ams, block_wise=True, percentile=100, steps=3, sms=2, bps=1,
             max_tensors=64, amp=False, grad_fn=None, maps=None):
    params = make_params(dtype, sizes)
    st = make_lists(params, eight, ams, block_wise, percentile < 100)
    e_params, e_st = clone_all(params, st)
    for it in range(steps):
        grads = [torch.randn(p.shape).to(dtype) * (3.0 if it == 1 else 1.0) for p in params]
        if grad_fn is not None:
            grads = [grad_fn(it, g) for g in grads]
        gs = torch.tensor(2.0 ** (it + 1)) if amp else None
        fi = torch.tensor(1.0 if (amp and it == 1) else 0.0) if amp else None
        if amp:
            grads = [(g.float() * gs).to(dtype) for g in grads]
        call(torch.ops.adamw8.fused_step_multi, params, grads, st, eight, block_wise, percentile, 1e-2, gs, fi,
             maps=maps)
        call(emu_op, e_params, grads, e_st, eight, block_wise, percentile, 1e-2, gs, fi,
             extra=([], sms, bps, max_tensors), maps=maps)
        assert_same(params, st, e_params, e_st, what=f"step {it}: ")
    return params, st


SIZES = [1, 255, 257, 4097, 0, 2048, (64, 33, "t"), ("off", 1000)]
FORMATS = [(False, False, True), (False, True, True), (True, False, True), (True, True, True),
           (True, False, False), (True, True, False)]
FORMAT_IDS = ["32bit", "32bit-ams", "8bit", "8bit-ams", "8bit-tensorwise", "8bit-ams-tensorwise"]


# ----------------------------------------------------------------------- the tests
@pytest.mark.parametrize("eight, ams, block_wise", FORMATS, ids=FORMAT_IDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_kernels_equal_cpu_kernel(emu, dtype, eight, ams, block_wise):
    """Every dtype x format x amsgrad (x block_wise): odd sizes, an empty tensor, a
    transposed (non-contiguous) parameter, an unaligned view."""
    run_both(emu.fused_step_multi, dtype, SIZES, eight, ams, block_wise)


OTHER_MAPS = {  # (signed map, unsigned map): none of them takes the CUDA kernels' packed route
    "linear": (torch.linspace(-1, 1, 256), torch.linspace(0, 1, 256)),
    "repeated": (torch.linspace(-1, 1, 256).mul(40).round().div(40), torch.linspace(0, 1, 256).mul(40).round().div(40)),
    "linear-and-dynamic": (torch.linspace(-1, 1, 256), None),
}


@pytest.mark.parametrize("name", OTHER_MAPS)
@pytest.mark.parametrize("ams", [False, True], ids=["plain", "ams"])
def test_kernels_with_other_maps_take_the_search_route(emu, name, ams):
    """A map the packed tables cannot hold sends the whole block down the search route:
    still equal to the CPU kernel bit for bit (the dynamic maps take the packed route in
    every other test here)."""
    q1, q2 = OTHER_MAPS[name]
    q2 = torch.ops.adamw8.create_dynamic_map(False) if q2 is None else q2
    assert emu.lut_routes(q1.contiguous())[3] == 0
    run_both(emu.fused_step_multi, torch.float32, SIZES, True, ams, maps=(q1.contiguous(), q2.contiguous()))


@pytest.mark.parametrize("eight, block_wise", [(False, True), (True, True), (True, False)],
                         ids=["32bit", "8bit", "8bit-tensorwise"])
def test_percentile_clipping(emu, eight, block_wise):
    """The norm pass, the per-tensor history and scale, over more than 100 steps' worth of
    history slots being filled (steps 1..4 here; the history fill on step 1 included)."""
    run_both(emu.fused_step_multi, torch.float32, [300, 4097, (40, 20, "t")], eight, True, block_wise,
             percentile=5, steps=4)


@pytest.mark.parametrize("eight", [False, True], ids=["32bit", "8bit"])
def test_amp_scale_and_found_inf(emu, eight):
    """Gradients unscaled in the kernel; a found_inf step changes nothing at all."""
    run_both(emu.fused_step_multi, torch.bfloat16, [4097, 300], eight, False, amp=True, steps=3)


def test_more_tensors_than_one_launch_takes(emu):
    run_both(emu.fused_step_multi, torch.float32, [300, 1, 4097, 0, 513, 256, 77], True, True, max_tensors=3)


@pytest.mark.parametrize("bps, max_tensors", [(1, 1), (2, 5), (4, 64), (3, 2)])
def test_cuda_launch_configs_give_the_same_bits(emu, bps, max_tensors):
    """The CUDA launch table's knobs (adamw8/tuning.py): blocks per SM of the persistent grid
    (the emulator sizes its grid as the CUDA launch does, sms x min(occupancy, cap)) and
    tensors per launch: every config equals the CPU kernel bit for bit."""
    run_both(emu.fused_step_multi, torch.bfloat16, [300, 4097, 1, 70 * 256 + 3, 513], True, True, sms=3, bps=bps,
             max_tensors=max_tensors, steps=2)


def test_many_units_per_warp(emu):
    """A one-block grid on one SM: each warp walks many units across tensor boundaries."""
    run_both(emu.fused_step_multi, torch.float16, [70 * 256 + 3, 5, 9 * 256], True, False, sms=1, bps=1, steps=2)


# Block absmax around the bounded quotient's range [2^-64, 2^64] (quantize_8bit) and beyond.
EDGE_SCALES = [2.0**-80, 2.0**-64, 2.0**-63.5, 1e-30, 1e-3, 1.0, 2.0**63.5, 2.0**64, 2.0**64.5, 2.0**90, 0.0,
               float("inf"), float("nan")]


@pytest.mark.parametrize("ams, block_wise", [(False, True), (True, True), (False, False), (True, False)],
                         ids=["8bit", "8bit-ams", "8bit-tensorwise", "8bit-ams-tensorwise"])
def test_kernels_at_the_quantizer_edges(emu, ams, block_wise):
    """Old states with block absmax from 2^-80 to 2^90 (and 0, inf, NaN), gradients tiny and
    huge against them and exact zeros of both signs: the bounded quotient where it applies,
    the division elsewhere, the same bits as the CPU kernel (itself checked against the
    reference in tests/test_cpu_kernels.py)."""
    n = len(EDGE_SCALES) * 256 - 9
    params = [torch.randn(n)]
    st = make_lists(params, True, ams, block_wise)
    gen = torch.Generator().manual_seed(6)
    scales = torch.tensor(EDGE_SCALES)
    for k in ("state1", "state2", "state3"):
        for t in st[k]:
            t.copy_(torch.randint(0, 256, (n,), generator=gen, dtype=torch.uint8))
    for k in ("absmax1", "absmax2", "absmax3"):
        for t in st[k]:
            t.copy_(scales if block_wise else scales[4:5])
    g = torch.randn(n, generator=gen) * scales.repeat_interleave(256)[:n].nan_to_num(0.0, 1e30, 1e30).clamp(max=1e30)
    g[0:300:7], g[1:300:7], g[2:300:7] = 1e-40, -0.0, 0.0
    g[3000:3010] = 3.0e38
    g[260:270] *= 1e-30
    e_params, e_st = clone_all(params, st)
    for it in range(3):
        call(torch.ops.adamw8.fused_step_multi, params, [g], st, True, block_wise, 100, 1e-2)
        call(emu.fused_step_multi, e_params, [g], e_st, True, block_wise, 100, 1e-2, extra=([], 2, 1, 64))
        assert_same(params, st, e_params, e_st, what=f"step {it}: ")
        g = g.roll(97) * (1e-20 if it == 0 else 1e20)


def test_nonfinite_gradients(emu):
    """NaN, +-inf and |g| > 1.8e19 (g*g overflows): the element is reset, in both formats."""
    def poison(it, g):
        g = g.clone()
        if g.numel() > 10:
            g.view(-1)[3] = float("nan")
            g.view(-1)[5] = float("inf")
            g.view(-1)[7] = -3e19
        return g

    for eight in (False, True):
        run_both(emu.fused_step_multi, torch.float32, [4097, 300], eight, False, grad_fn=poison)


@pytest.mark.parametrize("scenario", ["repro", "const-1e-4", "const-1e-6"])
def test_no_spikes_in_the_emulated_kernel(emu, scenario):
    """The zero point (tests/test_zero_point.py) holds in the CUDA kernel's own source."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_spikes", ROOT / "benchmarks" / "bench_spikes.py")
    b = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(b)
    param, grads = b.scenarios(20)[scenario]
    p = [param.clone()]
    st = make_lists(p, True, False)
    worst = 0.0
    for g in grads:
        before = p[0].clone()
        call(emu.fused_step_multi, p, [g], st, True, True, 100, b.LR, extra=([], 2, 1, 64))
        worst = max(worst, (p[0] - before).abs().max().item() / b.LR)
    assert worst <= 3.0


@pytest.mark.parametrize("block_wise", [True, False], ids=["blockwise", "tensorwise"])
@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_quantize_kernels_equal_cpu_kernels(emu, signed, block_wise):
    """quantize/dequantize: odd sizes, an unaligned view, values across the map's range,
    NaN and inf (a NaN block's absmax is NaN), on a grid of 2 blocks."""
    q = torch.ops.adamw8.create_dynamic_map(signed)
    for n in (0, 1, 255, 257, 4097, 70 * 256):
        x = torch.randn(n + 1)[1:] * torch.logspace(-9, 2, n + 1)[1:]
        if not signed:
            x = x.abs()
        if n > 300:
            x[5], x[260] = float("nan"), float("inf")
        want = torch.ops.adamw8.quantize(x, q, block_wise, signed)
        got = emu.quantize(x, q, block_wise, signed, 2, 1)
        assert torch.equal(got[0], want[0]), f"codes, n={n}"
        assert torch.equal(bits(got[1]), bits(want[1])), f"absmax, n={n}"
        back = torch.ops.adamw8.dequantize(want[0], want[1], q, block_wise)
        assert torch.equal(bits(emu.dequantize(want[0], want[1], q, block_wise, 2, 1)), bits(back)), f"n={n}"


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_nearest_code_table_is_exact_for_every_float(emu, signed):
    """nearest_lut.h's table (the CPU's step count and the CUDA kernels' 254) and the CPU
    kernels' threshold, packed and plane routes (quant_lut_cpu.h; the plane route on its domain
    |x| <= 1) against the exact nearest rule, for all 2^32 bit patterns but NaN."""
    q = torch.ops.adamw8.create_dynamic_map(signed)
    assert list(emu.lut_routes(q)) == [1, 1, 1, 1, 1]  # every route exists for the dynamic maps, span 1
    assert emu.lut_mismatches(q, 1) == 0


def test_nearest_code_table_is_exact_for_other_maps(emu):
    """Any sorted map works (a checkpoint may carry one): a linear map, one with values far
    below the table's finest bucket (2^-24), repeated values, and one whose thresholds are too
    close in six binades for the plane route's 512 buckets, on a sample of floats."""
    linear = torch.linspace(-1, 1, 256)
    tiny = torch.sort(torch.cat([torch.logspace(-40, 0, 128), -torch.logspace(-40, 0, 128)])).values
    repeated = torch.linspace(-1, 1, 256).mul(40).round().div(40)
    routes = []
    for q in (linear, tiny.float(), repeated, crowded_map()):
        assert emu.lut_mismatches(q.contiguous(), 7919) == 0
        routes.append(list(emu.lut_routes(q.contiguous())))
    assert routes[0] == [1, 1, 0, 0, 0]  # linear: a threshold in the tiny edge bucket, no packed route
    assert routes[2][0] == 0 and routes[2][3] == 0  # repeated values: no thresholds, the search
    assert routes[3] == [1, 1, 1, 1, 0]  # crowded: the packed routes, not the plane route


def test_division_free_quotient_equals_the_division(emu):
    """adamw8_math.h's div_rn (a * 1/b corrected by two fused multiply-adds) gives the
    division's bits for every mantissa of a, for divisors across the range the kernels use it in
    (a block's absmax in [2^-64, 2^64]; c2_sqrt in [2^-12, 1]) and quotients from 2^-40 to 2: the
    8-bit step's normalisation and its sqrt(vh) / c2_sqrt.  Below that range the residual
    underflows and the check finds the rounding errors the kernels' range guard keeps out."""
    gen = torch.Generator().manual_seed(11)
    mantissas = [1.0, 1.9999999, 1.0000001, 1.5, 4.0 / 3.0] + (1 + torch.rand(3, generator=gen)).tolist()
    divisors = [m * 2.0**e for m, e in zip(mantissas, [-64, 64, -12, 0, -30, 30, -64, 63])] + [0.03162277, 1.0]
    for b in divisors:
        assert emu.div_rn_mismatches(b, -40, 1) == 0, b
    assert emu.div_rn_mismatches(1.2345 * 2.0**-100, -24, 0) > 0  # outside the range it can fail


def test_a_planted_defect_is_caught():
    """The emulation can fail: a warp max that reduces nothing (each lane keeps its own
    maximum as the unit's absmax) built from a modified copy of the kernel source gives
    different 8-bit state."""
    with tempfile.TemporaryDirectory() as tmp:
        src = pathlib.Path(tmp) / "csrc"
        shutil.copytree(ROOT / "csrc", src)
        k = src / "fused_step_common.cuh"
        text = k.read_text()
        planted = text.replace("warp_max_u32(float_bits(x))", "float_bits(x)", 1)
        assert planted != text, "the warp max to plant the defect in was not found"
        k.write_text(planted)
        _build("adamw8_emu_defect", src)
    with pytest.raises(AssertionError, match="differs"):
        run_both(torch.ops.adamw8_emu_defect.fused_step_multi, torch.float32, [4097], True, False)


# Tensors whose units a warp takes many of in one launch (one block, 8 warps, 116 units): full
# units staged while the one before is updated, across tensors, with a misaligned view, a
# transposed one (no staging), tails and a one-unit tensor between them.
STAGED_SIZES = [40 * 256, ("off", 3000), 33 * 256 + 5, (64, 33, "t"), 256, 20 * 256]


@pytest.fixture(scope="module")
def emu_stage2():
    """The kernels built with ADAMW8_STAGE=2: the kernels of fp32 parameters and the 32-bit ones
    (but amsgrad) stage too, by cross-lane copies (each warp instruction a contiguous run of the
    unit, read by the owner lanes after a __syncwarp)."""
    _build("adamw8_emu_stage2", ROOT / "csrc", ("-DADAMW8_STAGE=2",))
    return torch.ops.adamw8_emu_stage2


@pytest.mark.parametrize("build", ["default", "stage2"])
@pytest.mark.parametrize("eight, ams, block_wise", FORMATS, ids=FORMAT_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_staged_units_equal_cpu_kernel(request, build, dtype, eight, ams, block_wise):
    """The update kernel's staging (each warp's next unit copied into its slot of the dynamic
    shared memory while it updates the current one; the emulated copies land only at the lanes'
    visibility point after their wait) gives the CPU kernels' results bit for bit, with AMP
    scaling too: the default build (8-bit kernels of bf16 parameters stage) and ADAMW8_STAGE=2
    (fp32 parameters and 32-bit states too, by cross-lane copies)."""
    op = request.getfixturevalue("emu" if build == "default" else "emu_stage2").fused_step_multi
    run_both(op, dtype, STAGED_SIZES, eight, ams, block_wise, sms=1, steps=3)
    run_both(op, dtype, STAGED_SIZES, eight, ams, block_wise, sms=1, steps=2, amp=True)


def test_a_planted_staging_defect_is_caught():
    """The staging check can fail: a lane that reads its slot before waiting for the copies into
    it (the emulation fills a slot when a copy is issued and lands the copies only at the lanes'
    visibility point after their wait) gives other results, in every kind of staging kernel
    (built with ADAMW8_STAGE=2): its own copies (8-bit, bf16 parameters, with amsgrad too) and
    cross-lane copies (8-bit of fp32 parameters; 32-bit)."""
    with tempfile.TemporaryDirectory() as tmp:
        src = pathlib.Path(tmp) / "csrc"
        shutil.copytree(ROOT / "csrc", src)
        k = src / "fused_step_units.cuh"
        text = k.read_text()
        wait_then_read = "    st.wait();\n    st.stage->read_pg(p, g);\n"
        assert text.count(wait_then_read) == 2, "the staged reads to plant the defect in were not found"
        k.write_text(text.replace(wait_then_read, "    st.stage->read_pg(p, g);\n    st.wait();\n"))
        _build("adamw8_emu_stage_defect", src, ("-DADAMW8_STAGE=2",))
    for dtype, eight, ams in [(torch.bfloat16, True, False), (torch.bfloat16, True, True), (torch.float32, True, False),
                              (torch.float32, False, False)]:
        with pytest.raises(AssertionError, match="differs"):
            run_both(torch.ops.adamw8_emu_stage_defect.fused_step_multi, dtype, STAGED_SIZES, eight, ams,
                     sms=1, steps=1)


@pytest.fixture(scope="module")
def emu_shuffles():
    """The kernels as nvcc builds them for sm_75, which has no warp reduction instruction and
    no cp.async: warp_max_u32 by shuffles (ADAMW8_WARP_REDUX=0), for the absmax and the warp
    index, and no staging (ADAMW8_STAGE=0: every unit loads from global memory)."""
    _build("adamw8_emu_shfl", ROOT / "csrc", ("-DADAMW8_WARP_REDUX=0", "-DADAMW8_STAGE=0"))
    return torch.ops.adamw8_emu_shfl


@pytest.mark.parametrize("eight, ams, block_wise", [FORMATS[0], FORMATS[3], FORMATS[4]],
                         ids=[FORMAT_IDS[0], FORMAT_IDS[3], FORMAT_IDS[4]])
def test_kernels_without_warp_reductions(emu_shuffles, eight, ams, block_wise):
    """The sm_75 form (the warp maxima by shuffles, no staging) equals the CPU kernels bit for bit: 32-bit, 8-bit with
    amsgrad (three block maxima a unit) and one absmax per tensor (the scratch maxima)."""
    run_both(emu_shuffles.fused_step_multi, torch.float32, SIZES, eight, ams, block_wise)
    run_both(emu_shuffles.fused_step_multi, torch.bfloat16, [70 * 256 + 3, 5, 9 * 256], eight, ams, block_wise,
             sms=1, steps=2)


def test_emulation_runs_the_built_source():
    """The emulated source is the one nvcc compiles: fused_step_cuda.cu includes the header."""
    cu = (ROOT / "csrc" / "fused_step_cuda.cu").read_text()
    assert '#include "fused_step_kernels.cuh"' in cu
    assert "__global__" not in cu  # no kernel lives outside the emulated header
    assert os.path.exists(ROOT / "csrc" / "emu" / "emu_ops.cpp")


@pytest.mark.parametrize("max_tensors", [64, 2], ids=["one-launch", "two-per-launch"])
@pytest.mark.parametrize("eight, ams, block_wise", FORMATS, ids=FORMAT_IDS)
def test_flat_layout_in_the_emulated_kernels(emu, eight, ams, block_wise, max_tensors):
    """The optimizer's form (flat buffers and a layout, ops/schemas.py): the same launch
    records point into the flat buffers, and the update kernel's last block does the
    finish work through the completion counter (every launch of the call in turn);
    results equal the CPU kernels'."""
    from test_ops import flat_args

    from conftest import hyper, make_state

    params = [torch.randn(n) for n in (300, 1, 4097, 513)]
    states = [make_state(p, eight, ams, block_wise, 50) for p in params]
    for s in states[1:]:
        s["qmap1"], s["qmap2"] = states[0]["qmap1"], states[0]["qmap2"]
    emu_params = [p.clone() for p in params]
    for _ in range(3):  # three steps of the parameters, each from the (zero) state in `states`
        grads = [torch.randn_like(p) for p in params]
        args, lists, _ = flat_args(params, grads, states, hyper("cpu", lr=1e-2), block_wise, 50)
        e_args, e_lists, _ = flat_args(emu_params, grads, states, hyper("cpu", lr=1e-2), block_wise, 50)
        torch.ops.adamw8.fused_step_multi(*args)
        emu.fused_step_multi(*e_args, 2, 1, max_tensors)
        assert all(torch.equal(p, q) for p, q in zip(params, emu_params))
        assert e_lists["steps"][0][-1] == 0  # the completion counter is back to 0 for the next call
        assert (e_lists["steps"][0][:-1] == 1).all()  # the last block incremented every step
        for k in lists:
            for x, y in zip(lists[k], e_lists[k]):
                assert torch.equal(bits(x), bits(y)), k
