"""The adamw8 custom ops: every schema, declared once, with its fake kernel beside it.

Kernels are registered elsewhere: the C++/CUDA extension (``csrc/``) through
``TORCH_LIBRARY_IMPL(adamw8, ...)``, or the PyTorch reference
(``reference.py``) when the extension is missing (see ``ops/__init__.py``).

Conventions (SPEC §3): ops that mutate return ``()`` and mark only what they
write (``Tensor(a!)``); per-step values (``lr``, betas, ``step``,
``grad_scale``, ``found_inf``) are 0-d float32 tensors on the parameters'
device, read inside the kernel, so a changing schedule never recompiles and a
CUDA graph replays with new values.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .reference import GNORM_HISTORY, create_dynamic_map, num_blocks

NAMESPACE = "adamw8"
_lib = torch.library.Library(NAMESPACE, "DEF")

_STEP_ARGS = (
    "Tensor lr, Tensor beta1, Tensor beta2, float eps, float weight_decay, bool block_wise=True, "
    "int percentile=100, Tensor? grad_scale=None, Tensor? found_inf=None"
)

# fused_step: one AdamW step for one parameter (SPEC §2).
#   state1/state2 (and state3 with amsgrad) are float32 (32-bit state) or uint8
#   codes (8-bit state, then absmax* and qmap1 (signed) / qmap2 (unsigned) are
#   required).  step is the count before this step; the op adds 1.
#   gnorm_vec (float32[100]) with percentile < 100 enables percentile clipping.
_lib.define(
    "fused_step(Tensor(a!) param, Tensor grad, Tensor(b!) state1, Tensor(c!) state2, "
    "Tensor(d!)? state3, Tensor(e!)? absmax1, Tensor(f!)? absmax2, Tensor(g!)? absmax3, "
    "Tensor? qmap1, Tensor? qmap2, Tensor(h!) step, Tensor(i!)? gnorm_vec, " + _STEP_ARGS + ") -> ()"
)
# fused_step_multi: the same for a list of parameters of one device, dtype and
#   state format, in one call.  Optional per-parameter lists are empty when unused.
_lib.define(
    "fused_step_multi(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] state1, Tensor(c!)[] state2, "
    "Tensor(d!)[] state3, Tensor(e!)[] absmax1, Tensor(f!)[] absmax2, Tensor(g!)[] absmax3, "
    "Tensor? qmap1, Tensor? qmap2, Tensor(h!)[] steps, Tensor(i!)[] gnorm_vecs, " + _STEP_ARGS + ") -> ()"
)
# quantize: float32 x -> (uint8 codes of x's shape, float32 absmax[nblocks]).
_lib.define("quantize(Tensor x, Tensor qmap, bool block_wise=True, bool signed=True) -> (Tensor, Tensor)")
# dequantize: uint8 codes + absmax -> float32 values of codes' shape.
_lib.define("dequantize(Tensor codes, Tensor absmax, Tensor qmap, bool block_wise=True) -> Tensor")
# create_dynamic_map: the 256-entry signed/unsigned map of SPEC §2.2 (float32, CPU).
_lib.define("create_dynamic_map(bool signed=True) -> Tensor")


def _chk(cond: bool, msg: str) -> None:
    torch._check(cond, lambda: f"adamw8: {msg}")


def _check_scalar(t, name: str, dev) -> None:
    _chk(isinstance(t, Tensor), f"{name} must be a tensor, got {type(t).__name__}")
    _chk(
        t.dtype == torch.float32 and t.numel() == 1,
        f"{name} must be a float32 tensor with one element, got {t.dtype} of shape {list(t.shape)}",
    )
    _chk(t.device == dev, f"{name} must be on the parameters' device {dev}, got {t.device}")


def _check_slot(slot: dict, g: dict, what: str) -> None:
    p = slot["param"]
    _chk(p.layout == torch.strided, f"{what} must be a dense tensor, got layout {p.layout}")
    _chk(
        p.dtype in (torch.float32, torch.bfloat16, torch.float16),
        f"{what} must be float32, bfloat16 or float16, got {p.dtype}",
    )
    dev = p.device
    gr = slot["grad"]
    _chk(gr is not None, f"grad of {what} is None")
    _chk(
        gr.layout == torch.strided,
        f"grad of {what} must be dense, got layout {gr.layout} (sparse gradients are not supported)",
    )
    _chk(gr.dtype == p.dtype, f"grad of {what} must have the parameter's dtype {p.dtype}, got {gr.dtype}")
    _chk(gr.device == dev, f"grad of {what} must be on {dev}, got {gr.device}")
    _chk(gr.shape == p.shape, f"grad of {what} must have shape {list(p.shape)}, got {list(gr.shape)}")
    s1 = slot["state1"]
    eight = s1.dtype == torch.uint8
    _chk(
        s1.dtype == torch.float32 or eight,
        f"state1 of {what} must be float32 (32-bit state) or uint8 (8-bit state), got {s1.dtype}",
    )
    for name, required in (("state1", True), ("state2", True), ("state3", False)):
        t = slot[name]
        if t is None:
            _chk(not required, f"{name} of {what} is None")
            continue
        _chk(t.dtype == s1.dtype, f"{name} of {what} must have state1's dtype {s1.dtype}, got {t.dtype}")
        _chk(
            t.shape == p.shape,
            f"{name} of {what} must have the parameter's shape {list(p.shape)}, got {list(t.shape)}",
        )
        _chk(t.is_contiguous(), f"{name} of {what} must be contiguous")
        _chk(t.device == dev, f"{name} of {what} must be on {dev}, got {t.device}")
    nb = num_blocks(p.numel(), g["block_wise"])
    for name, required in (
        ("absmax1", eight),
        ("absmax2", eight),
        ("absmax3", eight and slot["state3"] is not None),
    ):
        a = slot[name]
        if not required:
            _chk(
                a is None,
                f"{name} of {what} is only used with the matching 8-bit state; "
                "got a tensor where none was expected",
            )
            continue
        _chk(a is not None, f"8-bit state of {what} needs {name}, got None")
        kind = "one per 256-element block" if g["block_wise"] else "one per tensor, block_wise=False"
        _chk(
            a.dtype == torch.float32 and a.dim() == 1 and a.numel() == nb and a.is_contiguous(),
            f"{name} of {what} must be a contiguous float32 tensor of shape [{nb}] ({kind}), "
            f"got {a.dtype} of shape {list(a.shape)}",
        )
        _chk(a.device == dev, f"{name} of {what} must be on {dev}, got {a.device}")
    st = slot["step"]
    _chk(
        isinstance(st, Tensor) and st.dtype == torch.int64 and st.numel() == 1,
        f"step of {what} must be an int64 tensor with one element (the exact step count), got "
        f"{st.dtype if isinstance(st, Tensor) else type(st).__name__}"
        f"{' of shape ' + str(list(st.shape)) if isinstance(st, Tensor) else ''}",
    )
    _chk(st.device == dev, f"step of {what} must be on the parameters' device {dev}, got {st.device}")
    gv = slot["gnorm_vec"]
    if g["percentile"] < 100:
        _chk(
            gv is not None,
            f"percentile clipping (percentile={g['percentile']}) needs gnorm_vec for {what}, got None",
        )
    if gv is not None:
        _chk(
            gv.dtype == torch.float32 and gv.dim() == 1 and gv.numel() == GNORM_HISTORY and gv.is_contiguous(),
            f"gnorm_vec of {what} must be a contiguous float32 tensor of shape [100], "
            f"got {gv.dtype} of shape {list(gv.shape)}",
        )
        _chk(gv.device == dev, f"gnorm_vec of {what} must be on {dev}, got {gv.device}")


def _check_group(g: dict, dev, eight: bool) -> None:
    for name in ("lr", "beta1", "beta2"):
        _check_scalar(g[name], name, dev)
    _chk(g["eps"] >= 0.0, f"eps must be >= 0, got {g['eps']}")
    _chk(g["weight_decay"] >= 0.0, f"weight_decay must be >= 0, got {g['weight_decay']}")
    for name in ("grad_scale", "found_inf"):
        if g[name] is not None:
            _check_scalar(g[name], name, dev)
    for name in ("qmap1", "qmap2"):
        q = g[name]
        if eight:
            _chk(q is not None, f"8-bit state needs {name}, got None")
            _chk(
                q.dtype == torch.float32 and q.dim() == 1 and q.numel() == 256 and q.is_contiguous(),
                f"{name} must be a contiguous float32 tensor of shape [256], got {q.dtype} of shape {list(q.shape)}",
            )
            _chk(q.device == dev, f"{name} must be on {dev}, got {q.device}")
        else:
            _chk(q is None, f"{name} is only used with 8-bit (uint8) state; got a tensor for float32 state")


def check_call(slots: list[dict], g: dict) -> None:
    """Python twin of csrc/fused_step_checks.h: raises before anything is written."""
    _chk(1 <= g["percentile"] <= 100, f"percentile must be in 1..100, got {g['percentile']}")
    if not slots:
        return
    first = slots[0]
    for i, s in enumerate(slots):
        what = "param" if len(slots) == 1 else f"params[{i}]"
        _chk(
            s["param"].device == first["param"].device,
            f"one call takes parameters of one device: expected {first['param'].device} for {what}, "
            f"got {s['param'].device}",
        )
        _chk(
            s["param"].dtype == first["param"].dtype,
            f"one call takes parameters of one dtype: expected {first['param'].dtype} for {what}, "
            f"got {s['param'].dtype}",
        )
        _chk(
            s["state1"].dtype == first["state1"].dtype,
            f"one call takes one state format: expected state1 dtype {first['state1'].dtype} for {what}, "
            f"got {s['state1'].dtype}",
        )
        _chk(
            (s["state3"] is None) == (first["state3"] is None),
            f"either every parameter of a call has state3 (amsgrad) or none has; {what} differs",
        )
        _check_slot(s, g, what)
    _check_group(g, first["param"].device, first["state1"].dtype == torch.uint8)


_SLOT_KEYS = ("param", "grad", "state1", "state2", "state3", "absmax1", "absmax2", "absmax3", "step", "gnorm_vec")
_LIST_KEYS = ("params", "grads", "state1", "state2", "state3", "absmax1", "absmax2", "absmax3", "steps", "gnorm_vecs")
_OPTIONAL_LISTS = {"state3", "absmax1", "absmax2", "absmax3", "gnorm_vecs"}


def group_args(qmap1, qmap2, lr, beta1, beta2, eps, weight_decay, block_wise, percentile, grad_scale, found_inf):
    return dict(
        qmap1=qmap1, qmap2=qmap2, lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
        block_wise=block_wise, percentile=percentile, grad_scale=grad_scale, found_inf=found_inf,
    )


def slots_from_lists(*lists) -> list[dict]:
    """Per-parameter slots of fused_step_multi's lists; checks the list lengths."""
    n = len(lists[0])
    for key, lst in zip(_LIST_KEYS, lists):
        ok = len(lst) == n or (key in _OPTIONAL_LISTS and len(lst) == 0)
        opt = " or none" if key in _OPTIONAL_LISTS else ""
        _chk(ok, f"{key} must have {n} entries (one per parameter){opt}, got {len(lst)}")
    return [
        {k: (lst[i] if len(lst) else None) for k, lst in zip(_SLOT_KEYS, lists)}
        for i in range(n)
    ]


@torch.library.register_fake("adamw8::fused_step")
def _fused_step_fake(param, grad, state1, state2, state3, absmax1, absmax2, absmax3, qmap1, qmap2, step,
                     gnorm_vec, lr, beta1, beta2, eps, weight_decay, block_wise=True, percentile=100,
                     grad_scale=None, found_inf=None):
    slot = dict(zip(_SLOT_KEYS, (param, grad, state1, state2, state3, absmax1, absmax2, absmax3, step, gnorm_vec)))
    check_call([slot], group_args(qmap1, qmap2, lr, beta1, beta2, eps, weight_decay, block_wise, percentile,
                                  grad_scale, found_inf))


@torch.library.register_fake("adamw8::fused_step_multi")
def _fused_step_multi_fake(params, grads, state1, state2, state3, absmax1, absmax2, absmax3, qmap1, qmap2, steps,
                           gnorm_vecs, lr, beta1, beta2, eps, weight_decay, block_wise=True, percentile=100,
                           grad_scale=None, found_inf=None):
    slots = slots_from_lists(params, grads, state1, state2, state3, absmax1, absmax2, absmax3, steps, gnorm_vecs)
    check_call(slots, group_args(qmap1, qmap2, lr, beta1, beta2, eps, weight_decay, block_wise, percentile,
                                 grad_scale, found_inf))


def _check_qmap(qmap: Tensor, dev) -> None:
    _chk(
        qmap.dtype == torch.float32 and qmap.dim() == 1 and qmap.numel() == 256,
        f"qmap must be a float32 tensor of shape [256], got {qmap.dtype} of shape {list(qmap.shape)}",
    )
    _chk(qmap.device == dev, f"qmap must be on {dev}, got {qmap.device}")


@torch.library.register_fake("adamw8::quantize")
def _quantize_fake(x, qmap, block_wise=True, signed=True):
    _chk(x.dtype == torch.float32, f"quantize: x must be float32, got {x.dtype}")
    _chk(x.layout == torch.strided, f"quantize: x must be dense, got layout {x.layout}")
    _check_qmap(qmap, x.device)
    nb = num_blocks(x.numel(), block_wise)
    return torch.empty(x.shape, dtype=torch.uint8, device=x.device), x.new_empty((nb,))


@torch.library.register_fake("adamw8::dequantize")
def _dequantize_fake(codes, absmax, qmap, block_wise=True):
    _chk(codes.dtype == torch.uint8, f"dequantize: codes must be uint8, got {codes.dtype}")
    _check_qmap(qmap, codes.device)
    nb = num_blocks(codes.numel(), block_wise)
    _chk(
        absmax.dtype == torch.float32 and absmax.numel() == nb,
        f"dequantize: absmax must be float32 with {nb} elements, got {absmax.dtype} with {absmax.numel()}",
    )
    _chk(absmax.device == codes.device, f"dequantize: absmax must be on {codes.device}, got {absmax.device}")
    return torch.empty(codes.shape, dtype=torch.float32, device=codes.device)


@torch.library.register_fake("adamw8::create_dynamic_map")
def _create_dynamic_map_fake(signed=True):
    return torch.empty((256,), dtype=torch.float32)


# The map is built from torch float32 ops on every backend (SPEC §2.2 requires
# bnb's exact construction), so it has one composite implementation.
@torch.library.impl(_lib, "create_dynamic_map", "CompositeExplicitAutograd")
def _create_dynamic_map_impl(signed=True):
    return create_dynamic_map(signed)
