"""The dynamic maps (docs/design.md, "Maps") and the quantize/dequantize ops (docs/design.md: "8-bit state", "block_wise=False")."""

from __future__ import annotations

import pytest
import torch

from adamw8.ops import reference as R
from conftest import device_params


def spec_map(signed: bool) -> torch.Tensor:
    """docs/design.md, "Maps", written out from its text: for i in 0..6 the midpoints of
    linspace(0.1, 1, k+1) in float32, k = 2^i (signed) or 2^(i+1) (unsigned), scaled by
    10^(i-6); the signed map adds their negatives; append 0 and 1.0; sort."""
    parts = []
    for i in range(7):
        k = (1 << i) if signed else (1 << (i + 1))
        lin = torch.linspace(0.1, 1, k + 1, dtype=torch.float32)
        mid = (lin[1:] + lin[:-1]) / 2.0
        scale = 10.0 ** (i - 6) if i < 6 else 1
        parts.append(scale * mid)
        if signed:
            parts.append(-scale * mid)
    parts.append(torch.tensor([0.0, 1.0]))
    return torch.sort(torch.cat(parts)).values


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_dynamic_map_is_spec_construction(signed):
    got = torch.ops.adamw8.create_dynamic_map(signed)
    want = spec_map(signed)
    assert got.dtype == torch.float32 and got.shape == (256,)
    assert torch.equal(got, want)  # bit-identical: the maps are saved in checkpoints
    assert torch.equal(got, torch.sort(got).values)
    if signed:
        assert (got < 0).sum() == 127 and got[127] == 0 and got[255] == 1.0
        assert abs(got.min().item() - (-0.992969)) < 1e-6
    else:
        assert got[0] == 0 and got[255] == 1.0 and (got >= 0).all()


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_dynamic_map_equals_bitsandbytes(signed):
    F = pytest.importorskip("bitsandbytes.functional")
    assert torch.equal(torch.ops.adamw8.create_dynamic_map(signed), F.create_dynamic_map(signed=signed))


def brute_force_nearest(x: torch.Tensor, qmap: torch.Tensor) -> torch.Tensor:
    """Nearest map entry by exhaustive search in float64; ties to the lower code."""
    d = (x.double()[:, None] - qmap.double()[None, :]).abs()
    return d.argmin(dim=1)  # argmin returns the first (lowest) index among equal distances


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("block_wise", [True, False], ids=["blockwise", "tensorwise"])
@pytest.mark.parametrize("n", [0, 1, 255, 256, 257, 4097])
def test_quantize_matches_reference_and_is_nearest(device, block_wise, n):
    q1 = torch.ops.adamw8.create_dynamic_map(True).to(device)
    x = torch.randn(n, device=device) * torch.logspace(-6, 0, max(n, 1), device=device)[:n]
    codes, absmax = torch.ops.adamw8.quantize(x, q1, block_wise, True)
    ref_codes, ref_absmax = R.quantize(x, q1, block_wise, True)
    assert codes.dtype == torch.uint8 and codes.shape == x.shape
    assert absmax.shape == (R.num_blocks(n, block_wise),)
    assert torch.equal(codes, ref_codes) and torch.equal(absmax, ref_absmax)
    if n == 0:
        return
    # independent check of nearest rounding (away from the sign fix, which only moves
    # values whose nearest code has the other sign)
    bs = R.BLOCK_SIZE if block_wise else n
    xn = (x.cpu() / absmax.cpu().repeat_interleave(bs)[:n]).float()
    nearest = brute_force_nearest(xn, q1.cpu())
    sign_ok = torch.signbit(q1.cpu()[nearest]) == torch.signbit(x.cpu())
    assert torch.equal(codes.cpu().long()[sign_ok], nearest[sign_ok])
    # sign fix: no value changes sign, small negatives never become +0
    deq = torch.ops.adamw8.dequantize(codes, absmax, q1, block_wise)
    assert (torch.signbit(deq.cpu()) == torch.signbit(x.cpu())).all()


@pytest.mark.parametrize("device", device_params())
def test_quantize_roundtrip_error(device):
    """Dequantize(quantize(x)) stays within half the local code spacing of x."""
    q2 = torch.ops.adamw8.create_dynamic_map(False).to(device)
    x = torch.rand(10000, device=device)
    codes, absmax = torch.ops.adamw8.quantize(x, q2, True, False)
    back = torch.ops.adamw8.dequantize(codes, absmax, q2, True)
    torch.testing.assert_close(back, R.dequantize(codes, absmax, q2, True), rtol=0, atol=0)
    c = codes.long().cpu()
    spacing = torch.maximum(q2.cpu()[(c + 1).clamp(max=255)] - q2.cpu()[c], q2.cpu()[c] - q2.cpu()[(c - 1).clamp(min=0)])
    bound = spacing * absmax.cpu().repeat_interleave(256)[: x.numel()] / 2 + 1e-7
    assert ((back.cpu() - x.cpu()).abs() <= bound).all()


def test_ties_go_to_the_lower_code():
    q = torch.ops.adamw8.create_dynamic_map(False)
    mid = (q[100] + q[101]) / 2  # exact midpoint in fp32 (when representable)
    if (mid - q[100]) != (q[101] - mid):
        pytest.skip("midpoint not exact in fp32")
    x = torch.tensor([mid.item(), 1.0])  # absmax = 1: x/absmax is x
    codes, _ = torch.ops.adamw8.quantize(x, q, True, False)
    assert codes[0] == 100


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda q: torch.ops.adamw8.quantize(torch.randn(10, dtype=torch.float64), q), "x must be float32"),
        (lambda q: torch.ops.adamw8.quantize(torch.randn(10), q[:128]), r"qmap must be a float32 tensor of shape \[256\]"),
        (lambda q: torch.ops.adamw8.dequantize(torch.zeros(10), torch.ones(1), q), "codes must be uint8"),
        (lambda q: torch.ops.adamw8.dequantize(torch.zeros(300, dtype=torch.uint8), torch.ones(1), q),
         "absmax must be float32 with 2 elements"),
        (lambda q: torch.ops.adamw8.quantize(torch.randn(10), q.flip(0)),
         r"qmap must be sorted in ascending order, got qmap\[0\] = 1 > qmap\[1\] = 0.99"),
        (lambda q: torch.ops.adamw8.quantize(torch.randn(10), q.index_fill(0, torch.tensor([7]), float("nan"))),
         r"qmap must be sorted in ascending order, got qmap\[7\] = NaN"),
        (lambda q: R.quantize(torch.randn(10), q.flip(0), True, True), "qmap must be sorted in ascending order"),
    ],
    ids=["x-dtype", "qmap-shape", "codes-dtype", "absmax-count", "qmap-order", "qmap-nan", "reference-qmap-order"],
)
def test_quantize_ops_reject_bad_input(call, match):
    with pytest.raises(RuntimeError, match=match):
        call(torch.ops.adamw8.create_dynamic_map(True))


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_quantize_edge_values_match_reference(signed):
    """Every map value, the float just above and below it, the midpoints between neighbours
    and +-0: the kernels' search (a lookup table on the CPU) agrees with the reference's
    searchsorted on each."""
    q = torch.ops.adamw8.create_dynamic_map(signed)
    mids = (q[1:] + q[:-1]) / 2
    up = torch.nextafter(q, torch.full_like(q, 2.0))
    down = torch.nextafter(q, torch.full_like(q, -2.0))
    x = torch.cat([q, mids, up, down, torch.tensor([0.0, -0.0])])
    x = x[(x.abs() <= 1.0) & (signed | (x >= 0))]
    # one block per 255 values plus a 1.0 in each block, so every block's absmax is exactly 1
    blocks = [torch.cat([chunk, torch.tensor([1.0])]) for chunk in x.split(255)]
    flat = torch.cat([torch.nn.functional.pad(b, (0, 256 - b.numel())) for b in blocks])
    codes, absmax = torch.ops.adamw8.quantize(flat, q, True, signed)
    ref_codes, ref_absmax = R.quantize(flat, q, True, signed)
    assert (absmax == 1.0).all()
    assert torch.equal(codes, ref_codes)
    # the map's own values quantize to their own codes
    own, _ = torch.ops.adamw8.quantize(torch.cat([q, torch.tensor([1.0])]), q, False, signed)
    assert torch.equal(own[:256].long(), torch.arange(256))
