"""The CPU kernels' builds (csrc/cpu: base, avx2, avx512, avx512vbmi, chosen at run time) and launch configs,
each bit for bit against the PyTorch reference (adamw8/ops/reference.py): parameters, states and
absmax, every format, three parameter dtypes, vector tails, odd grains, non-finite gradients."""

from __future__ import annotations

import itertools
import platform
import shutil

import pytest
import torch
from conftest import bits, clone_state, crowded_map, hyper, make_state, op_args, reference_values

import adamw8
from adamw8 import tuning
from adamw8.ops import reference as R

pytestmark = pytest.mark.skipif(not tuning.available(), reason="the compiled CPU kernels are not built")


def _caps():
    """The builds this CPU runs; the avx512vbmi build twice, its quantizer's quotient by div_rn
    and by the divider ("avx512vbmi/divide": tuning.divide_quotients)."""
    caps = tuning.capabilities() if tuning.available() else ["base"]
    return caps + ["avx512vbmi/divide"] if "avx512vbmi" in caps else caps


@pytest.fixture
def table():
    """Restores the launch table (and the quotient's route) after a test that changes them."""
    before = tuning.get_table()
    yield
    tuning.set_table(before)
    tuning.reset_divide_quotients()


def _use(cap: str, grain: int) -> None:
    build, _, route = cap.partition("/")
    tuning.divide_quotients(route == "divide")
    tuning.set_table({k: {"capability": build, "grain": grain} for k in tuning.keys()})


def _mismatches(ref_p, ref_s, p, s) -> list[str]:
    """The names of the tensors whose bits differ (the maps are inputs)."""
    bad = [] if torch.equal(bits(ref_p), bits(p)) else ["param"]
    return bad + [k for k, v in s.items()
                  if isinstance(v, torch.Tensor) and k not in ("qmap1", "qmap2") and not torch.equal(bits(v), bits(ref_s[k]))]


FORMATS = list(itertools.product([True, False], [False, True], [True, False], [100, 95]))


@pytest.mark.parametrize("cap", _caps())
@pytest.mark.parametrize("eight,amsgrad,block_wise,pct", FORMATS,
                         ids=[f"{'8' if e else '32'}bit{'-ams' if a else ''}{'' if b else '-tensorwise'}-pct{p}"
                              for e, a, b, p in FORMATS])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_every_build_matches_the_reference_bit_for_bit(table, cap, eight, amsgrad, block_wise, pct, dtype):
    _use(cap, 1024)  # several tasks even for the small sizes
    torch.manual_seed(0)
    # 64, 448: a last block of whole 64-value chunks (the avx512vbmi quantizer's, csrc/cpu/avx512_lookup.h)
    for n in (1, 15, 17, 64, 255, 257, 448, 4099, 70001):
        p = torch.randn(n).to(dtype)
        s = make_state(p, eight, amsgrad, block_wise, pct)
        h = hyper("cpu", lr=1e-2, wd=0.1)
        for it in range(4):
            g = torch.randn(n) * (30.0 if it == 2 else 1.0)
            if it == 3 and n > 20:
                g[3], g[7], g[11] = float("nan"), float("inf"), 3e19  # the non-finite rule, incl. g*g overflow
            g = g.to(dtype)
            ref_p, ref_s = p.clone(), clone_state(s)
            R.fused_step_reference(*op_args(ref_p, g, ref_s, h, block_wise, pct))
            torch.ops.adamw8.fused_step(*op_args(p, g, s, h, block_wise, pct))
            assert _mismatches(ref_p, ref_s, p, s) == [], (cap, n, it)


@pytest.mark.parametrize("cap", _caps())
@pytest.mark.parametrize("eight", [True, False], ids=["8bit", "32bit"])
def test_bf16_parameters_round_as_torch_does(table, cap, eight):
    """The new bf16 parameters round to nearest even as torch rounds them, in every build (the
    AVX-512 builds' 8-bit step rounds a block's parameters in a vector loop of its own): 2^18
    random values, among which the fp32 results that lie exactly halfway between two bf16 values
    (counted: there must be some), infinities, subnormals and the largest bf16, against the
    reference bit for bit.  NaN parameters stay NaN; their payload is not specified (torch's own
    conversions disagree: its vectorised one gives 0xFFFF, c10::BFloat16 0x7FC0)."""
    _use(cap, 1024)
    torch.manual_seed(3)
    n = (1 << 18) + 300
    special = torch.tensor([0x7FC0, 0xFFC0, 0x7F81, 0xFFA5, 0x7F80, 0xFF80, 0x0001, 0x8003, 0x007F, 0x7F7F, 0xFF7F,
                            0x0000, 0x8000], dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    p = (torch.randn(n) * torch.logspace(-30, 30, n)[torch.randperm(n)]).bfloat16()
    p[:special.numel()] = special
    p[100:120] = special[4:6].repeat(10)  # infinities, in a vector of their own
    s = make_state(p, eight, False, True, 100)
    h = hyper("cpu", lr=1e-2, wd=0.1)
    ties = 0
    for _ in range(2):
        g = torch.randn(n).bfloat16()
        ties += int(((bits(reference_values(p, g, s, h)["p"]) & 0xFFFF) == 0x8000).sum())
        ref_p, ref_s = p.clone(), clone_state(s)
        R.fused_step_reference(*op_args(ref_p, g, ref_s, h))
        torch.ops.adamw8.fused_step(*op_args(p, g, s, h))
        nan = ref_p.isnan()
        assert torch.equal(nan, p.isnan()), cap
        ref_p[nan] = p[nan] = 0  # the same NaNs, whatever their payloads; every other bit compared next
        assert _mismatches(ref_p, ref_s, p, s) == [], cap
    assert ties > 0  # the case that tells round-half-even from other roundings


@pytest.mark.parametrize("eight", [True, False], ids=["8bit", "32bit"])
def test_grain_and_build_do_not_change_the_bits(table, eight):
    """One optimizer run per launch config (grains from one block to the whole tensor, every
    build): identical parameters and state."""
    shapes = [(3, 5), (300, 70), (4099,), (1 << 15,)]
    results = []
    for cap, grain in itertools.product(_caps(), (1, 256, 4096, 1 << 20)):
        _use(cap, grain)
        torch.manual_seed(1)
        ps = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
        opt = (adamw8.AdamW8bit if eight else adamw8.AdamW32bit)(ps, lr=1e-2, weight_decay=0.1)
        for _ in range(3):
            for p in ps:
                p.grad = torch.randn_like(p)
            opt.step()
        results.append(([p.detach().clone() for p in ps], opt.state_dict()))
    first_p, first_sd = results[0]
    for ps, sd in results[1:]:
        for a, b in zip(first_p, ps):
            assert torch.equal(a, b)
        for i in first_sd["state"]:
            for k, v in first_sd["state"][i].items():
                if isinstance(v, torch.Tensor):
                    assert torch.equal(v, sd["state"][i][k]), k


def test_quantize_op_every_build_matches_the_reference(table):
    torch.manual_seed(2)
    x = torch.randn(70001) * torch.logspace(-8, 0, 70001)
    x[5], x[9] = float("nan"), float("inf")
    for signed in (True, False):
        q = torch.ops.adamw8.create_dynamic_map(signed)
        xs = x if signed else x.abs()
        for bw in (True, False):
            want = R.quantize(xs, q, bw, signed)
            got = []
            for cap in _caps():
                _use(cap, 4096)
                got.append(torch.ops.adamw8.quantize(xs, q, bw, signed))
            for codes, absmax in got[1:]:
                assert torch.equal(codes, got[0][0]) and torch.equal(bits(absmax), bits(got[0][1]))
            assert torch.equal(got[0][0], want[0])
            assert torch.equal(bits(got[0][1]), bits(want[1]))


@pytest.mark.parametrize("kind", ["linear", "close triples", "repeated values", "dense near 0.5", "crowded"])
def test_quantize_with_other_maps_matches_the_reference(table, kind):
    """Every route of quantize_block, through every build, against the reference's rule: a
    linear map (a threshold in the tiny bucket: the threshold route, not the packed one),
    triples of close codes (two thresholds in a bucket: span 2), repeated values and 100 codes
    in one bucket (the scalar forward steps), and a crowded map (the bounded packed route where
    the plane route does not fit).  The dynamic maps (plane and packed routes) are the other
    tests' (tests/test_emulation.py checks which map takes which route)."""
    if kind == "crowded":
        q = crowded_map()
    elif kind == "linear":
        q = torch.linspace(-1, 1, 256)
    elif kind == "close triples":
        q = torch.linspace(-1, 1, 256)
        for i in range(140, 250, 9):
            q[i + 1], q[i + 2] = q[i] + 0.001, q[i] + 0.002
    elif kind == "repeated values":
        q = torch.linspace(-1, 1, 256).mul(40).round().div(40)  # runs of equal values
    else:
        q = torch.cat([torch.linspace(-1, 0.49, 128), torch.linspace(0.5, 0.5 + 2**-12, 100),
                       torch.linspace(0.51, 1, 28)])  # 100 codes inside one table bucket
    q = q.sort().values.contiguous()
    torch.manual_seed(3)
    x = torch.cat([torch.randn(5000), torch.rand(5000) * 2 - 1, 0.5 + torch.rand(2000) * 2**-12, q, -q,
                   q[1:] + (q[1:] - q[:-1]) * torch.rand(255) * 0.5])
    want = R.quantize(x, q, True, True)
    for cap in _caps():
        _use(cap, 4096)
        got = torch.ops.adamw8.quantize(x, q, True, True)
        assert torch.equal(got[0], want[0]), (cap, (got[0] != want[0]).nonzero()[:5].tolist())


def _around_thresholds(q: torch.Tensor) -> torch.Tensor:
    """Floats within 4 ulps of every midpoint of neighbouring codes (where the nearest code
    changes), the codes themselves, zeros of both signs and the smallest subnormals, each with
    both signs, all in [-1, 1]."""
    mid = (q[:-1] + q[1:]) / 2
    steps = [mid]
    up, down = mid, mid
    for _ in range(4):
        up, down = torch.nextafter(up, torch.tensor(2.0)), torch.nextafter(down, torch.tensor(-2.0))
        steps += [up, down]
    x = torch.cat(steps + [q, torch.tensor([0.0, -0.0, 1e-45, 2e-45, 1e-40])])
    return torch.cat([x, -x]).clamp(-1.0, 1.0)


@pytest.mark.parametrize("kind", ["signed", "unsigned", "crowded"])
def test_quantize_around_every_threshold_matches_the_reference(table, kind):
    """The bounded routes (csrc/cpu/kernels.h, quantize_state: the plane route, the packed one,
    the plain loop) at every place the nearest code changes, in every build, against the
    reference: with absmax 1 (the values themselves are normalised), a power of two (exact
    quotients through div_rn) and 3.3; per block and per tensor."""
    q = crowded_map() if kind == "crowded" else torch.ops.adamw8.create_dynamic_map(kind == "signed")
    signed = kind != "unsigned"
    x = _around_thresholds(q)
    blocks = x.split(255)  # each block gets a value of magnitude 1: its absmax is exactly the scale
    x = torch.cat([torch.cat([torch.tensor([1.0 if i % 2 else -1.0]), b]) for i, b in enumerate(blocks)])
    for scale in (1.0, 2.0**-20, 3.3):
        xs = x * scale
        for bw in (True, False):
            want = R.quantize(xs, q, bw, signed)
            for cap in _caps():
                _use(cap, 4096)
                codes, absmax = torch.ops.adamw8.quantize(xs, q, bw, signed)
                bad = (codes != want[0]).nonzero().flatten()
                assert bad.numel() == 0, (cap, scale, bw, xs[bad[:4]].tolist(), codes[bad[:4]].tolist())
                assert torch.equal(bits(absmax), bits(want[1]))


# Per-block absmax scales around the bounded quantizer's range [2^-64, 2^64] (csrc/cpu/kernels.h,
# quantize_state) and the division-free quotient's (adamw8_math.h, div_rn): inside, at the ends,
# just outside, and zero / inf / NaN, which take the dividing route.
EDGE_SCALES = [2.0**-80, 2.0**-64, 2.0**-63.5, 1e-30, 1e-3, 1.0, 2.0**63.5, 2.0**64, 2.0**64.5, 2.0**90, 0.0,
               float("inf"), float("nan")]


@pytest.mark.parametrize("cap", _caps())
@pytest.mark.parametrize("amsgrad", [False, True], ids=["adamw", "amsgrad"])
@pytest.mark.parametrize("block_wise", [True, False], ids=["blockwise", "tensorwise"])
def test_8bit_step_at_the_quantizer_edges_matches_the_reference(table, cap, amsgrad, block_wise):
    """States and gradients built to reach every corner of the 8-bit step's fast route: block
    absmax from 2^-80 to 2^90 (and 0, inf, NaN), gradients that are tiny against the state (their
    quotients underflow), exact zeros of both signs, and the largest finite gradients."""
    _use(cap, 256)
    torch.manual_seed(5)
    nb = len(EDGE_SCALES)
    n = nb * 256 - 9  # a short last block
    p = torch.randn(n)
    s = make_state(p, True, amsgrad, block_wise)
    gen = torch.Generator().manual_seed(6)
    for key in ("state1", "state2", "state3"):
        if s[key] is not None:
            s[key].copy_(torch.randint(0, 256, (n,), generator=gen, dtype=torch.uint8))
    scales = torch.tensor(EDGE_SCALES)
    for key in ("absmax1", "absmax2", "absmax3"):
        if s[key] is not None:
            s[key].copy_(scales if block_wise else scales[4:5])
    g = torch.randn(n) * scales.repeat_interleave(256)[:n].nan_to_num(0.0, 1e30, 1e30).clamp(max=1e30)
    g[0:300:7] = 1e-40  # subnormal gradients
    g[1:300:7] = -0.0
    g[2:300:7] = 0.0
    g[3000:3010] = 3.0e38
    g[260:270] *= 1e-30  # tiny against the block's state
    h = hyper("cpu", lr=1e-2, wd=0.1)
    for it in range(3):
        ref_p, ref_s = p.clone(), clone_state(s)
        R.fused_step_reference(*op_args(ref_p, g, ref_s, h, block_wise))
        torch.ops.adamw8.fused_step(*op_args(p, g, s, h, block_wise))
        assert _mismatches(ref_p, ref_s, p, s) == [], (cap, it)
        g = g.roll(97) * (1e-20 if it == 0 else 1e20)


@pytest.mark.parametrize("cap", _caps())
def test_8bit_step_negative_zero_moments_match_the_reference(table, cap):
    """A block whose m is all -0 and +0 with one tiny value (the sign fix as a clamp, and code 0
    turned to 1 for a positive v whose quotient underflows)."""
    _use(cap, 256)
    n = 512
    p = torch.randn(n)
    s = make_state(p, True, False, True)
    g = torch.zeros(n)
    g[::2] = -0.0
    g[5], g[300] = -1e-38, 1e-38
    g[6], g[301] = 1e-3, -1e-3  # the blocks' absmax: the tiny values' quotients underflow
    h = hyper("cpu", lr=1e-2, wd=0.0)
    for _ in range(3):
        ref_p, ref_s = p.clone(), clone_state(s)
        R.fused_step_reference(*op_args(ref_p, g, ref_s, h, True))
        torch.ops.adamw8.fused_step(*op_args(p, g, s, h, True))
        assert _mismatches(ref_p, ref_s, p, s) == [], cap



def _instruction_counts(path: str, mnemonic: str) -> dict[str, int]:
    """{demangled function: how many `mnemonic` instructions it has} over every function of the
    compiled extension (objdump's disassembly)."""
    import subprocess

    out = subprocess.run(["objdump", "-d", "-C", "--no-show-raw-insn", path], capture_output=True, text=True,
                         check=True).stdout
    counts: dict[str, int] = {}
    fn = None
    for line in out.splitlines():
        if line.endswith(">:") and " <" in line:
            fn = line.split(" <", 1)[1][:-2]
            fn = None if fn.endswith("@plt") else fn  # the linker's call stubs
            if fn is not None:
                counts.setdefault(fn, 0)
        elif fn is not None and mnemonic in line:
            counts[fn] += 1
    return counts


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64") or shutil.which("objdump") is None,
                    reason="needs x86-64 and binutils' objdump")
def test_every_8bit_loop_prefetches_its_codes():
    # The 8-bit loops touch the codes of the block kCodePrefetchBlocks ahead (csrc/cpu/kernels.h):
    # 17% of the step on a Zen 5 core.  GCC deletes prefetches it finds in an out-of-line helper
    # (a prefetch counts as free of side effects), and nothing else would notice: the bits are the
    # same without them.  So every instantiation of both loops in every build must have them.
    import adamw8._C as ext

    counts = _instruction_counts(ext.__file__, "prefetch")
    for build in ("base", "avx2", "avx512", "avx512vbmi"):
        for loop in ("step8_blocks", "reduce8_blocks"):
            fns = {f: n for f, n in counts.items() if f"::cpu::{build}::{loop}<" in f}
            assert fns, f"no {build} {loop} in the extension"
            missing = sorted(f for f, n in fns.items() if n == 0)
            assert not missing, f"{build} {loop}: no prefetch in {missing}"


def _mem_available() -> int:
    """Bytes of memory the system can still give (MemAvailable), 0 where it does not say."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@pytest.mark.slow
def test_more_than_2_31_elements():
    """64-bit indexing on the CPU (SPEC section 1.1: tensors of more than 2^31 elements), through the
    optimizer's flat state: a bf16 parameter of 2^31 + 300 elements between two small ones in one
    8-bit bucket, so the third one's state lies past 2^31 in the bucket's buffers.  The big
    one's first and last elements move as a first AdamW step with g = 1 moves them (by lr, no
    weight decay), its middle (g = 0) stays at 0; the small ones equal the PyTorch reference.
    Needs about 13 GiB."""
    n = (1 << 31) + 300
    need = n * 6 + (4 << 30)  # parameter, gradient, two code arrays, and room
    if _mem_available() < need:
        pytest.skip(f"needs {need / 2**30:.0f} GiB of available memory")
    gen = torch.Generator().manual_seed(5)
    small = [torch.randn(5000, generator=gen).bfloat16() for _ in range(2)]
    big = torch.zeros(n, dtype=torch.bfloat16)
    params = [torch.nn.Parameter(small[0].clone()), torch.nn.Parameter(big), torch.nn.Parameter(small[1].clone())]
    grads = [torch.randn(5000, generator=gen).bfloat16(), None, torch.randn(5000, generator=gen).bfloat16()]
    g = torch.zeros(n, dtype=torch.bfloat16)
    g[:5] = 1.0
    g[-300:] = 1.0
    grads[1] = g
    for p, gr in zip(params, grads):
        p.grad = gr
    opt = adamw8.AdamW8bit(params, lr=1e-2, weight_decay=0.0)
    opt.step()
    lr_step = torch.tensor(-1e-2, dtype=torch.bfloat16)  # p - lr * 1 / (1 + eps), rounded to bf16
    assert (params[1][:5] == lr_step).all() and (params[1][-300:] == lr_step).all()
    assert (params[1][5:100_000] == 0).all() and (params[1][-100_300:-300] == 0).all()
    assert (opt.state[params[1]]["state1"][-300:] == 255).all()  # m = absmax: the map's 1.0
    for p, p0, gr in ((params[0], small[0], grads[0]), (params[2], small[1], grads[2])):
        want, s = p0.clone(), make_state(p0, True, False)
        R.fused_step_reference(*op_args(want, gr, s, hyper("cpu", lr=1e-2, wd=0.0)))
        assert torch.equal(bits(p.detach()), bits(want))
        assert torch.equal(opt.state[p]["state1"], s["state1"]) and torch.equal(opt.state[p]["state2"], s["state2"])
        assert torch.equal(opt.state[p]["absmax1"], s["absmax1"])
