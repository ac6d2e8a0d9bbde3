"""adamw8's custom ops (``torch.ops.adamw8.*``): schemas, fake kernels and kernel loading.

Importing this package declares every op (``schemas.py``), registers the PyTorch reference
(``reference.py``) once for every backend (``CompositeExplicitAutograd``), and loads the
compiled kernels (``adamw8._C``), whose CPU and CUDA registrations take precedence over the
reference on their devices.  Where the extension is missing, or was built without CUDA, the
reference runs, and a warning names the fix: the ops always exist, and a slow path is never
silent.
"""

from __future__ import annotations

import math
import os
import warnings

import torch

from . import reference, schemas
from .reference import BLOCK_SIZE, GNORM_HISTORY, create_dynamic_map
from .schemas import HYPER_FIELDS, STEP_ARGS, StepArgs, multi_args, single_to_multi

_REBUILD = "pip install --no-build-isolation -e . (see README.md)"
_OPS = ("fused_step_multi", "quantize", "dequantize")  # the kernel-bearing ops


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


def has_kernel(op: str, device_type: str) -> bool:
    """Whether the compiled extension provides ``adamw8::op`` for a device type ("cpu"/"cuda")
    (the reference, registered for all backends at once, does not count)."""
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"adamw8::{op}", device_type.upper())


_warned: set = set()


def _note_reference(op: str, device: torch.device) -> None:
    """A CUDA call that reaches the reference has no compiled kernel: warn once per op."""
    if device.type == "cuda" and op not in _warned:
        _warned.add(op)
        warnings.warn(
            f"adamw8: this build has no CUDA kernel for {op}; running the PyTorch reference on CUDA "
            f"(correct, slow). Build the kernels (a CUDA toolkit, CUDA_HOME at its root) with: {_REBUILD}",
            RuntimeWarning,
            stacklevel=3,
        )


def _fused_step_multi_reference(*args, **kwargs):
    a = multi_args(*args, **kwargs)
    schemas.check_call(a)  # same checks as the kernels, before anything is written
    slots = schemas.slots(a)  # one view per parameter of the flat form
    if not slots:
        return
    _note_reference("fused_step_multi", slots[0]["params"].device)
    # the values the CPU kernels check (fused_step_cpu.cpp check_values, lut_for), before writing
    lr, beta1, beta2, eps, wd = a.hyper.detach().cpu().tolist()
    torch._check(0 <= lr < math.inf, lambda: f"adamw8: lr must be finite and >= 0, got {lr}")
    torch._check(0 <= beta1 < 1, lambda: f"adamw8: beta1 must be in [0, 1), got {beta1}")
    torch._check(0 <= beta2 < 1, lambda: f"adamw8: beta2 must be in [0, 1), got {beta2}")
    torch._check(0 <= eps < math.inf, lambda: f"adamw8: eps must be finite and >= 0, got {eps}")
    torch._check(0 <= wd < math.inf, lambda: f"adamw8: weight_decay must be finite and >= 0, got {wd}")
    for q in (a.qmap1, a.qmap2):
        if q is not None:
            reference.check_qmap(q)
    for s in slots:  # the reference takes fused_step's arguments: one parameter's
        reference.fused_step_reference(*(s[arg.multi] if arg in schemas.PER_PARAM else getattr(a, arg.multi)
                                         for arg in STEP_ARGS if arg.kind != "layout"))


def _quantize_reference(x, qmap, block_wise=True, signed=True):
    schemas._quantize_fake(x, qmap, block_wise, signed)  # same checks as the fake kernel
    _note_reference("quantize", x.device)
    return reference.quantize(x, qmap, block_wise, signed)


def _dequantize_reference(codes, absmax, qmap, block_wise=True):
    schemas._dequantize_fake(codes, absmax, qmap, block_wise)
    _note_reference("dequantize", codes.device)
    return reference.dequantize(codes, absmax, qmap, block_wise)


def _create_dynamic_map_impl(signed=True):
    # built from torch float32 ops on every backend (bitsandbytes' exact construction)
    return create_dynamic_map(signed)


# Kernels, not user code: a torch.compile'd function that falls back to eager for a frame
# (a graph break, an exception while tracing) would otherwise have Dynamo trace into them
# as new frames, with the compiled-state's dynamic shapes; so traced, the reference wrote
# garbage into a parameter's second block (tests/test_fallback.py).
for _op, _fn in (("fused_step_multi", _fused_step_multi_reference), ("quantize", _quantize_reference),
                 ("dequantize", _dequantize_reference), ("create_dynamic_map", _create_dynamic_map_impl)):
    schemas._lib.impl(_op, torch.compiler.disable(_fn), "CompositeExplicitAutograd")

_load_error = _load_extension()
_missing = {dk: [op for op in _OPS if not has_kernel(op, dk)] for dk in ("cpu", "cuda")}
using_reference = {dk: bool(ops) for dk, ops in _missing.items()}

if using_reference["cpu"]:
    warnings.warn(
        f"adamw8: the compiled kernels could not be loaded ({_load_error}); using the slow PyTorch "
        f"reference implementation. Build them with: {_REBUILD}",
        RuntimeWarning,
        stacklevel=2,
    )

__all__ = ["BLOCK_SIZE", "GNORM_HISTORY", "HYPER_FIELDS", "STEP_ARGS", "StepArgs", "create_dynamic_map",
           "has_kernel", "multi_args", "single_to_multi", "using_reference"]
