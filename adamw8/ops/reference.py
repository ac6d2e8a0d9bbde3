"""Pure-PyTorch reference of the adamw8 update (docs/design.md).

This module is the test oracle and the fallback implementation used when the
compiled extension is missing.  It is written for clarity and for bit-exactness
with the C++/CUDA kernels, not for speed:

* every fp32 operation is a separate, correctly rounded torch op on fp32
  tensors (no fused ``add(alpha=...)``/``addcdiv`` whose vectorised form may
  use FMA), in the same order as ``csrc/adamw8_math.h``;
* bias corrections are computed in double with the C library's ``pow`` (as the
  kernels do) and rounded to fp32 once;
* square roots go through float64 (``_sqrt32``): torch's vectorised CPU fp32
  ``sqrt`` is not correctly rounded, IEEE ``sqrtf`` (C++ and CUDA) is, and the
  double route rounds to exactly that value.

Tests and benchmarks import this module; nobody keeps a copy of this math.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

BLOCK_SIZE = 256  # elements per absmax block (bnb >= 0.44 blockwise layout)
GNORM_HISTORY = 100  # squared gradient norms kept for percentile clipping


def create_dynamic_map(signed: bool = True) -> Tensor:
    """The 256-entry dynamic quantization map (docs/design.md, "Maps"), bit-identical to bnb.

    For exponent i in 0..6 the map holds the midpoints of
    ``linspace(0.1, 1, k + 1)`` (float32) scaled by 10^(i-6), with k = 2^i for
    the signed map (plus the negatives) and k = 2^(i+1) for the unsigned map;
    0 and 1.0 complete it.  Returns a sorted float32 CPU tensor of shape [256].
    """
    values: list[float] = []
    for i in range(7):
        k = 2**i if signed else 2 ** (i + 1)
        edges = torch.linspace(0.1, 1, k + 1, dtype=torch.float32)
        mids = (edges[:-1] + edges[1:]) / 2.0
        values += ((10 ** (i - 6)) * mids).tolist()
        if signed:
            values += (-(10 ** (i - 6)) * mids).tolist()
    values += [0.0, 1.0]
    if len(values) != 256:  # construction invariant, not user input
        raise RuntimeError(f"dynamic map has {len(values)} entries, expected 256")
    values.sort()
    return torch.tensor(values, dtype=torch.float32)


def num_blocks(numel: int, block_wise: bool) -> int:
    """Number of absmax values of a state tensor with ``numel`` elements."""
    return -(-numel // BLOCK_SIZE) if block_wise else 1


def block_len(numel: int, block_wise: bool) -> int:
    """Elements per absmax block: 256, or the whole tensor with block_wise=False."""
    return BLOCK_SIZE if block_wise else max(numel, 1)


def check_qmap(qmap: Tensor) -> None:
    """The map is in ascending order with no NaN, as the nearest-code rule needs (the CPU
    kernels' check, quant_lut_cpu.h lut_for, with the same message)."""
    bad = (torch.isnan(qmap) | torch.cat([qmap.new_zeros(1, dtype=torch.bool), qmap[1:] < qmap[:-1]])).nonzero()
    if bad.numel():
        k = int(bad[0])
        got = (f"qmap[{k}] = NaN" if torch.isnan(qmap[k])
               else f"qmap[{k - 1}] = {qmap[k - 1]:g} > qmap[{k}] = {qmap[k]:g}")
        raise RuntimeError(f"adamw8: qmap must be sorted in ascending order, got {got}")


def quantize_nearest(x: Tensor, qmap: Tensor) -> Tensor:
    """Nearest code of each normalised fp32 value (ties go to the lower code).

    ``x`` is fp32 of any shape, ``qmap`` the sorted fp32[256] map (checked, as the CPU kernels
    check it).  Returns int64 codes with ``x``'s shape.
    """
    check_qmap(qmap)
    idx = (torch.searchsorted(qmap, x.contiguous(), right=True) - 1).clamp_(0, 254)
    lo = qmap[idx]
    hi = qmap[idx + 1]
    return idx + ((x - lo) > (hi - x)).long()


def sign_fix(codes: Tensor, values: Tensor, qmap: Tensor) -> Tensor:
    """bnb's sign fix for the signed state: a code whose map value has the other
    sign bit than the value moves one code toward the value's sign.  NaN is left
    alone (its sign bit differs between x86 and CUDA)."""
    wrong = (torch.signbit(qmap[codes]) != torch.signbit(values)) & ~torch.isnan(values)
    step = torch.where(values > 0, 1, -1)
    return torch.where(wrong, codes + step, codes)


def positive_floor(codes: Tensor, values: Tensor) -> Tensor:
    """The unsigned state never rounds a positive value to code 0 (the zero point,
    docs/design.md): such values take code 1, the smallest positive code."""
    return torch.where((codes == 0) & (values > 0), 1, codes)


def _blocks(x: Tensor, block_wise: bool) -> Tensor:
    """View a flat tensor as [nblocks, B], padded with zeros."""
    n = x.numel()
    bs = block_len(n, block_wise)
    nb = num_blocks(n, block_wise)
    pad = nb * bs - n
    return torch.nn.functional.pad(x, (0, pad)).view(nb, bs)


def quantize(x: Tensor, qmap: Tensor, block_wise: bool, signed: bool) -> tuple[Tensor, Tensor]:
    """Quantize fp32 ``x`` (any shape): returns (uint8 codes of x's shape, fp32 absmax[nblocks])."""
    flat = x.reshape(-1).float()
    n = flat.numel()
    absmax = _blocks(flat.abs(), block_wise).amax(dim=1)
    scale = absmax.repeat_interleave(block_len(n, block_wise))[:n]
    norm = torch.where(scale > 0, flat / torch.where(scale > 0, scale, 1.0), 0.0)
    norm = torch.where(torch.isnan(norm), 0.0, norm)  # adamw8_math.h normalize: inf / inf is 0
    codes = quantize_nearest(norm, qmap)
    codes = sign_fix(codes, flat, qmap) if signed else positive_floor(codes, flat)
    return codes.to(torch.uint8).view(x.shape), absmax


def dequantize(codes: Tensor, absmax: Tensor, qmap: Tensor, block_wise: bool) -> Tensor:
    """fp32 values of uint8 ``codes`` (any shape) with per-block ``absmax``."""
    n = codes.numel()
    scale = absmax.float().repeat_interleave(block_len(n, block_wise))[:n]
    return (qmap[codes.reshape(-1).long()] * scale).view(codes.shape)


def percentile_scale(grad32: Tensor, gnorm_vec: Tensor, t: int, percentile: int) -> Tensor:
    """docs/design.md, "Percentile clipping": update the squared-norm history in place, return gnorm_scale (fp32 0-d)."""
    finite = torch.where(torch.isfinite(grad32), grad32, 0.0)  # adamw8_math.h norm_term
    gn2 = (finite.double() ** 2).sum().clamp(max=torch.finfo(torch.float32).max).float()  # history_value
    if t == 1:
        gnorm_vec.fill_(gn2)
    else:
        gnorm_vec[t % GNORM_HISTORY] = gn2
    clip = _sqrt32(torch.sort(gnorm_vec).values[percentile])
    current = _sqrt32(gnorm_vec[t % GNORM_HISTORY])
    return torch.where(current > clip, clip / current, torch.ones_like(clip))


def _sqrt32(x: Tensor) -> Tensor:
    """Correctly rounded fp32 square root (as sqrtf in the kernels)."""
    return torch.sqrt(x.double()).float()


def _f32(x) -> Tensor:
    return torch.as_tensor(x, dtype=torch.float32)


def step_values(
    param: Tensor,
    grad: Tensor,
    state1: Tensor,
    state2: Tensor,
    state3: Tensor | None,
    absmax1: Tensor | None,
    absmax2: Tensor | None,
    absmax3: Tensor | None,
    qmap1: Tensor | None,
    qmap2: Tensor | None,
    step: Tensor,
    gnorm_vec: Tensor | None,
    hyper: Tensor,
    block_wise: bool = True,
    percentile: int = 100,
    grad_scale: Tensor | None = None,
) -> dict[str, Tensor | None]:
    """The new fp32 values of one step, before any quantization (docs/design.md).

    ``hyper`` holds lr, beta1, beta2, eps, weight_decay (float32 [5]).  Returns flat fp32
    tensors ``p``, ``m``, ``v`` and ``vh`` (``max(vmax, v)`` with amsgrad, else None).  Only
    ``gnorm_vec`` (the clipping history) is updated in place; everything else is read.
    """
    lr, beta1, beta2, eps, weight_decay = hyper.detach().float().cpu().tolist()
    eight_bit = state1.dtype == torch.uint8
    t = int(step) + 1  # exact int64 count
    dev = param.device
    b1 = _f32(float(beta1))
    b2 = _f32(float(beta2))
    lr32 = _f32(float(lr))
    c1 = _f32(1.0 - math.pow(float(b1), t))
    c2 = _f32(1.0 - math.pow(float(b2), t))
    step_size = lr32 / c1
    c2_sqrt = _sqrt32(c2)
    decay = _f32(1.0) - lr32 * _f32(weight_decay)
    one = _f32(1.0)
    b1, b2, step_size, c2_sqrt, decay, eps32, one = (
        x.to(dev) for x in (b1, b2, step_size, c2_sqrt, decay, _f32(eps), one)
    )

    g = grad.detach().reshape(-1).float()
    if grad_scale is not None:
        g = g / grad_scale.float().to(dev)
    if gnorm_vec is not None and percentile < 100:
        g = g * percentile_scale(g, gnorm_vec, int(t), percentile).to(dev)

    p = param.detach().reshape(-1).float()
    if eight_bit:
        m = dequantize(state1, absmax1, qmap1, block_wise).reshape(-1)
        v = dequantize(state2, absmax2, qmap2, block_wise).reshape(-1)
        vmax = None if state3 is None else dequantize(state3, absmax3, qmap2, block_wise).reshape(-1)
    else:
        m = state1.reshape(-1)
        v = state2.reshape(-1)
        vmax = None if state3 is None else state3.reshape(-1)

    # csrc/adamw8_math.h adamw_element, operation by operation
    m_new = b1 * m + (one - b1) * g
    v_new = b2 * v + (one - b2) * (g * g)
    # the non-finite rule: a non-finite gradient, m or v resets the element's moments
    # and keeps its parameter (every state format)
    bad = ~(torch.isfinite(g) & torch.isfinite(m_new) & torch.isfinite(v_new))
    m_new = torch.where(bad, 0.0, m_new)
    v_new = torch.where(bad, 0.0, v_new)
    vh = v_new if vmax is None else torch.where(vmax > v_new, vmax, v_new)
    denom = _sqrt32(vh) / c2_sqrt + eps32
    p_new = p * decay
    p_new = p_new - step_size * (m_new / denom)
    p_new = torch.where(bad, p, p_new)
    return {"p": p_new, "m": m_new, "v": v_new, "vh": None if vmax is None else vh}


def fused_step_reference(
    param: Tensor,
    grad: Tensor,
    state1: Tensor,
    state2: Tensor,
    state3: Tensor | None,
    absmax1: Tensor | None,
    absmax2: Tensor | None,
    absmax3: Tensor | None,
    qmap1: Tensor | None,
    qmap2: Tensor | None,
    step: Tensor,
    gnorm_vec: Tensor | None,
    hyper: Tensor,
    block_wise: bool = True,
    percentile: int = 100,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
) -> None:
    """One AdamW step for one parameter, in place (``adamw8::fused_step``'s contract and
    argument order, ops/schemas.py STEP_ARGS).

    Mutates ``param``, the state tensors, ``step`` (+1) and ``gnorm_vec``.  Runs on any
    device; synchronises with the host (it is the oracle, not the fast path).
    """
    if found_inf is not None and float(found_inf) != 0.0:
        return  # AMP: an inf/nan somewhere in the grads skips the whole step
    new = step_values(param, grad, state1, state2, state3, absmax1, absmax2, absmax3, qmap1, qmap2, step,
                      gnorm_vec, hyper, block_wise, percentile, grad_scale)
    param.copy_(new["p"].view(param.shape).to(param.dtype))
    if state1.dtype == torch.uint8:
        targets = [(state1, absmax1, new["m"], qmap1, True), (state2, absmax2, new["v"], qmap2, False)]
        if state3 is not None:
            targets.append((state3, absmax3, new["vh"], qmap2, False))
        for codes, absmax, values, qmap, signed in targets:
            c, a = quantize(values, qmap, block_wise, signed)
            codes.copy_(c.view(codes.shape))
            absmax.copy_(a)
    else:
        state1.copy_(new["m"].view(state1.shape))
        state2.copy_(new["v"].view(state2.shape))
        if state3 is not None:
            state3.copy_(new["vh"].view(state3.shape))
    step.add_(1)
