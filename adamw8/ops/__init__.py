"""adamw8's custom ops (``torch.ops.adamw8.*``): schemas, fake kernels and kernel loading.

Importing this package declares every op (``schemas.py``) and loads the
compiled kernels (``adamw8._C``).  Where the extension is missing, or was built
without CUDA, the PyTorch reference (``reference.py``) is registered for the
missing backend and a one-time warning names the fix: the ops always exist,
and a slow path is never silent.
"""

from __future__ import annotations

import os
import warnings

import torch

from . import reference, schemas  # noqa: F401  (schemas declares the ops)
from .reference import BLOCK_SIZE, GNORM_HISTORY, create_dynamic_map


_REBUILD = "pip install --no-build-isolation -e . (see README.md)"


def _load_extension() -> str | None:
    """Import adamw8._C; returns the error text when it cannot be loaded.

    ``ADAMW8_NO_EXTENSION=1`` skips it (debugging: everything runs the reference)."""
    if os.environ.get("ADAMW8_NO_EXTENSION", "0") == "1":
        return "ADAMW8_NO_EXTENSION=1 is set"
    try:
        from .. import _C  # noqa: F401
    except ImportError as e:  # not built, or built against another torch
        return str(e)
    return None


def _fused_step_fallback(param, grad, state1, state2, state3, absmax1, absmax2, absmax3, qmap1, qmap2, step,
                         gnorm_vec, lr, beta1, beta2, eps, weight_decay, block_wise=True, percentile=100,
                         grad_scale=None, found_inf=None):
    _fused_step_multi_fallback([param], [grad], [state1], [state2], [] if state3 is None else [state3],
                               [] if absmax1 is None else [absmax1], [] if absmax2 is None else [absmax2],
                               [] if absmax3 is None else [absmax3], qmap1, qmap2, [step],
                               [] if gnorm_vec is None else [gnorm_vec], lr, beta1, beta2, eps, weight_decay,
                               block_wise, percentile, grad_scale, found_inf)


def _fused_step_multi_fallback(params, grads, state1, state2, state3, absmax1, absmax2, absmax3, qmap1, qmap2,
                               steps, gnorm_vecs, lr, beta1, beta2, eps, weight_decay, block_wise=True,
                               percentile=100, grad_scale=None, found_inf=None):
    slots = schemas.slots_from_lists(params, grads, state1, state2, state3, absmax1, absmax2, absmax3, steps,
                                     gnorm_vecs)
    schemas.check_call(slots, schemas.group_args(qmap1, qmap2, lr, beta1, beta2, eps, weight_decay, block_wise,
                                                 percentile, grad_scale, found_inf))
    for s in slots:
        reference.fused_step_reference(
            s["param"], s["grad"], s["state1"], s["state2"], s["state3"], s["absmax1"], s["absmax2"],
            s["absmax3"], qmap1, qmap2, s["step"], s["gnorm_vec"], lr, beta1, beta2, eps, weight_decay,
            block_wise, percentile, grad_scale, found_inf,
        )


def _quantize_fallback(x, qmap, block_wise=True, signed=True):
    schemas._quantize_fake(x, qmap, block_wise, signed)  # same checks as the fake kernel
    return reference.quantize(x, qmap, block_wise, signed)


def _dequantize_fallback(codes, absmax, qmap, block_wise=True):
    schemas._dequantize_fake(codes, absmax, qmap, block_wise)
    return reference.dequantize(codes, absmax, qmap, block_wise)


_FALLBACKS = {
    "fused_step": _fused_step_fallback,
    "fused_step_multi": _fused_step_multi_fallback,
    "quantize": _quantize_fallback,
    "dequantize": _dequantize_fallback,
}

_load_error = _load_extension()


def has_kernel(op: str, device_type: str) -> bool:
    """Whether the compiled extension provides ``adamw8::op`` for a device type ("cpu"/"cuda")."""
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"adamw8::{op}", device_type.upper())


_missing = {dk: [op for op in _FALLBACKS if not has_kernel(op, dk)] for dk in ("cpu", "cuda")}
using_reference = {dk: bool(ops) for dk, ops in _missing.items()}


def _warn_on_first_call(op: str, fn):
    """The CUDA fallback of ``op``: the first call warns (a missing kernel is never silent)."""
    warned = []

    def wrapper(*args, **kwargs):
        if not warned:
            warned.append(True)
            warnings.warn(
                f"adamw8: this build has no CUDA kernel for {op}; running the PyTorch reference on CUDA "
                f"(correct, slow). Build the kernels with: ADAMW8_EXPERIMENTAL_CUDA=1 {_REBUILD}",
                RuntimeWarning,
                stacklevel=2,
            )
        return fn(*args, **kwargs)

    return wrapper


for _dk, _ops in _missing.items():
    for _op in _ops:
        _fn = _FALLBACKS[_op] if _dk == "cpu" else _warn_on_first_call(_op, _FALLBACKS[_op])
        schemas._lib.impl(_op, _fn, _dk.upper())
# Sparse tensors dispatch to their own keys; the same checked entry points
# reject them with adamw8's message instead of "could not run ... SparseCPU".
for _dk in ("SparseCPU", "SparseCUDA"):
    for _op, _fn in _FALLBACKS.items():
        schemas._lib.impl(_op, _fn, _dk)

if using_reference["cpu"]:
    warnings.warn(
        f"adamw8: the compiled kernels could not be loaded ({_load_error}); using the slow PyTorch "
        f"reference implementation. Build them with: {_REBUILD}",
        RuntimeWarning,
        stacklevel=2,
    )

__all__ = ["BLOCK_SIZE", "GNORM_HISTORY", "create_dynamic_map", "has_kernel", "using_reference"]
