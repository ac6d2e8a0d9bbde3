"""The adamw8 custom ops: every schema, declared once, with its fake kernel beside it.

One argument record, ``STEP_ARGS``, spells the update op's arguments: the schemas of
``fused_step_multi`` (lists, one entry per parameter) and ``fused_step`` (one parameter)
are generated from it, and the fake kernel, the reference, the optimizer and the compile
pass read it (``StepArgs``, ``single_to_multi``).  The C++ entry point
(csrc/fused_step_checks.h) mirrors it, as C++ must.

Kernels are registered elsewhere: the C++/CUDA extension (``csrc/``) through
``TORCH_LIBRARY_IMPL(adamw8, CPU/CUDA, ...)``, over the PyTorch reference, which is
registered once for every backend (``ops/__init__.py``).  ``fused_step`` has no kernel of
its own: it is ``fused_step_multi`` with one parameter.

Conventions (docs/design.md): ops that mutate return ``()`` and mark only what they write
(``Tensor(a!)``); per-step values (``hyper`` = lr, beta1, beta2, eps, weight_decay, and
``step``, ``grad_scale``, ``found_inf``) are device tensors read inside the kernel, so a
changing value never recompiles and a CUDA graph replays with new values.
"""

from __future__ import annotations

from collections import namedtuple
from dataclasses import dataclass

import torch
from torch import Tensor
from torch._subclasses.fake_tensor import is_fake

from .reference import GNORM_HISTORY, num_blocks

NAMESPACE = "adamw8"
_lib = torch.library.Library(NAMESPACE, "DEF")

HYPER_FIELDS = ("lr", "beta1", "beta2", "eps", "weight_decay")  # hyper[i], float32 on the params' device


@dataclass(frozen=True)
class Arg:
    multi: str  # name in fused_step_multi
    single: str  # name in fused_step
    kind: str  # "mutable" | "mutable?" | "input" | "tensor" | "tensor?" | "bool" | "int" | "layout"
    alias: str = ""  # alias set of a mutable argument
    default: str = ""  # schema default, if any


# fused_step_multi updates a list of parameters of one device, param dtype and state
# format.  state1/state2 (state3 with amsgrad) are float32 (32-bit state) or uint8 codes
# (8-bit state: absmax* and qmap1 (signed) / qmap2 (unsigned) are then required).  steps:
# int64 counts before this step (the op adds 1).  gnorm_vecs (float32[100]) with
# percentile < 100: percentile clipping.  Optional per-parameter lists are empty when unused.
#
# The state lists hold one tensor per parameter, or, with a ``layout``, one flat 1-D buffer
# each for all the parameters (the optimizer's form: a handful of graph inputs instead of
# six per parameter).  layout = [slot_0, offset_0, slot_1, offset_1, ...]: parameter i's
# state1/2/3 are buffer[offset_i : offset_i + numel_i] (offset a multiple of 256), its
# absmax blocks start at offset_i / 256 (block_wise) or are entry slot_i (block_wise=False),
# its step is steps[slot_i] and its history gnorm_vecs[100 slot_i : 100 slot_i + 100].  The
# steps buffer has one more element after the last slot, 0 between calls: the CUDA
# kernels' completion counter (their last block increments the steps, no extra launch).
STEP_ARGS = (
    Arg("params", "param", "mutable", "a"),
    Arg("grads", "grad", "input"),
    Arg("state1", "state1", "mutable", "b"),
    Arg("state2", "state2", "mutable", "c"),
    Arg("state3", "state3", "mutable?", "d"),
    Arg("absmax1", "absmax1", "mutable?", "e"),
    Arg("absmax2", "absmax2", "mutable?", "f"),
    Arg("absmax3", "absmax3", "mutable?", "g"),
    Arg("qmap1", "qmap1", "tensor?"),
    Arg("qmap2", "qmap2", "tensor?"),
    Arg("steps", "step", "mutable", "h"),
    Arg("gnorm_vecs", "gnorm_vec", "mutable?", "i"),
    Arg("hyper", "hyper", "tensor"),
    Arg("block_wise", "block_wise", "bool", default="True"),
    Arg("percentile", "percentile", "int", default="100"),
    Arg("grad_scale", "grad_scale", "tensor?", default="None"),
    Arg("found_inf", "found_inf", "tensor?", default="None"),
    Arg("layout", "", "layout", default="[]"),  # fused_step_multi only
)
StepArgs = namedtuple("StepArgs", [a.multi for a in STEP_ARGS])
PER_PARAM = tuple(a for a in STEP_ARGS if a.kind in ("mutable", "mutable?", "input"))  # one entry per parameter


def _schema(name: str, multi: bool) -> str:
    parts = []
    for a in STEP_ARGS:
        if a.kind == "layout" and not multi:
            continue
        if a.kind in ("mutable", "mutable?"):
            t = f"Tensor({a.alias}!)[]" if multi else f"Tensor({a.alias}!)" + ("?" if a.kind == "mutable?" else "")
        elif a.kind == "input":
            t = "Tensor[]" if multi else "Tensor"
        else:
            t = {"tensor": "Tensor", "tensor?": "Tensor?", "bool": "bool", "int": "int", "layout": "int[]"}[a.kind]
        parts.append(f"{t} {a.multi if multi else a.single}" + (f"={a.default}" if a.default else ""))
    return f"{name}({', '.join(parts)}) -> ()"


_lib.define(_schema("fused_step_multi", multi=True))
_lib.define(_schema("fused_step", multi=False))
# quantize: float32 x -> (uint8 codes of x's shape, float32 absmax[nblocks]).
_lib.define("quantize(Tensor x, Tensor qmap, bool block_wise=True, bool signed=True) -> (Tensor, Tensor)")
# dequantize: uint8 codes + absmax -> float32 values of codes' shape.
_lib.define("dequantize(Tensor codes, Tensor absmax, Tensor qmap, bool block_wise=True) -> Tensor")
# create_dynamic_map: the 256-entry signed/unsigned map of docs/design.md (float32, CPU).
_lib.define("create_dynamic_map(bool signed=True) -> Tensor")


def single_to_multi(*args, **kwargs) -> StepArgs:
    """fused_step's arguments as fused_step_multi's (one-element lists; None -> [])."""
    values = {}
    for i, a in enumerate(STEP_ARGS):
        if a.kind == "layout":
            values[a.multi] = []
            continue
        v = args[i] if i < len(args) else kwargs.get(a.single, _default(a))
        if a in PER_PARAM:
            v = [] if v is None else [v]
        values[a.multi] = v
    return StepArgs(**values)


def multi_args(*args, **kwargs) -> StepArgs:
    values = {a.multi: (args[i] if i < len(args) else kwargs.get(a.multi, _default(a))) for i, a in enumerate(STEP_ARGS)}
    return StepArgs(**values)


def _default(a: Arg):
    return {"True": True, "100": 100, "None": None, "": None, "[]": []}[a.default]


# ------------------------------------------------------------------------ checks
def _chk(cond: bool, msg: str) -> None:
    torch._check(cond, lambda: f"adamw8: {msg}")


def _check_scalar(t, name: str, dev) -> None:
    _chk(isinstance(t, Tensor), f"{name} must be a tensor, got {type(t).__name__}")
    _chk(
        t.dtype == torch.float32 and t.numel() == 1,
        f"{name} must be a float32 tensor with one element, got {t.dtype} of shape {list(t.shape)}",
    )
    _chk(t.device == dev, f"{name} must be on the parameters' device {dev}, got {t.device}")


_WRITTEN = (("params", "parameter"), ("grads", "grad"), ("state1", "state1"), ("state2", "state2"),
            ("state3", "state3"), ("absmax1", "absmax1"), ("absmax2", "absmax2"), ("absmax3", "absmax3"),
            ("steps", "step"), ("gnorm_vecs", "gnorm_vec"))


def _share_memory(a: Tensor, b: Tensor) -> bool:
    """check_no_overlap's test (csrc/fused_step_checks.h): real tensors of one storage compared
    in detail (a non-dense view of a shared storage counts as overlapping); a fake tensor
    (torch.compile) has no memory, so there only the same tensor twice counts."""
    if a.numel() == 0 or b.numel() == 0:
        return False
    if is_fake(a) or is_fake(b):
        return a is b
    if a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr():
        return False
    return torch._C._overlaps(a, b)


def _check_no_overlap(slot: dict, what: str) -> None:
    ts = [(slot[key], name) for key, name in _WRITTEN if isinstance(slot[key], Tensor)]
    for i, (a, na) in enumerate(ts):
        for b, nb in ts[i + 1:]:
            _chk(not _share_memory(a, b),
                 f"the {na} and the {nb} of {what} share memory; the step needs each as its own tensor")


def _check_slots_disjoint(per_slot: list) -> None:
    """check_slots_disjoint's twin (csrc/fused_step_checks.h): what one parameter's step writes
    shares no memory with what another's writes.  `per_slot`: [(tensor or None, name), ...] per
    parameter.  Real tensors: byte ranges sorted and swept, _share_memory where two meet; fake
    ones (torch.compile) have no memory, so there only the same tensor twice counts."""
    ranges, fakes = [], {}

    def fail(a, b):
        (ia, na), (ib, nb) = sorted((a, b))
        _fail(f"the {na} of params[{ia}] and the {nb} of params[{ib}] share memory (the same tensor twice in one "
              "call?); each parameter's step needs its own tensors")

    for i, ts in enumerate(per_slot):
        for t, name in ts:
            if t is None or t.numel() == 0:
                continue
            if is_fake(t):
                first = fakes.setdefault(id(t), (i, name))
                if first[0] != i:
                    fail(first, (i, name))
                continue
            extent = 1 + sum((n - 1) * st for n, st in zip(t.shape, t.stride()))
            lo = t.data_ptr()
            ranges.append((lo, lo + extent * t.element_size(), i, name, t))
    ranges.sort(key=lambda r: r[0])
    reach = 0
    for j, (lo, hi, i, name, t) in enumerate(ranges):
        if j and lo < reach:
            for lo2, hi2, i2, name2, t2 in ranges[j - 1::-1]:
                if hi2 > lo and i2 != i and _share_memory(t2, t):
                    fail((i2, name2), (i, name))
        reach = max(reach, hi)


def _check_layout_disjoint(a: StepArgs) -> None:
    """check_layout_disjoint's twin: no two parameters share a slot or state elements."""
    n = len(a.params)
    seen = {}
    for i in range(n):
        slot = a.layout[2 * i]
        if slot in seen:
            _fail(f"layout: params[{seen[slot]}] and params[{i}] share slot {slot}; each parameter needs its own")
        seen[slot] = i
    spans = sorted((a.layout[2 * i + 1], a.layout[2 * i + 1] + a.params[i].numel(), i) for i in range(n)
                   if a.params[i].numel() > 0)
    for (s0, e0, i0), (s1, e1, i1) in zip(spans, spans[1:]):
        if s1 < e0:
            _fail(f"layout: params[{i0}] (elements [{s0}, {e0})) and params[{i1}] (elements [{s1}, {e1})) overlap "
                  "in the flat state buffers")


def _check_slot(slot: dict, a: StepArgs, what: str) -> None:
    p = slot["params"]
    _chk(p.layout == torch.strided, f"{what} must be a dense tensor, got layout {p.layout}")
    _chk(
        p.dtype in (torch.float32, torch.bfloat16, torch.float16),
        f"{what} must be float32, bfloat16 or float16, got {p.dtype}",
    )
    dev = p.device
    gr = slot["grads"]
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
    nb = num_blocks(p.numel(), a.block_wise)
    for name, required in (
        ("absmax1", eight),
        ("absmax2", eight),
        ("absmax3", eight and slot["state3"] is not None),
    ):
        t = slot[name]
        if not required:
            _chk(
                t is None,
                f"{name} of {what} is only used with the matching 8-bit state; "
                "got a tensor where none was expected",
            )
            continue
        _chk(t is not None, f"8-bit state of {what} needs {name}, got None")
        kind = "one per 256-element block" if a.block_wise else "one per tensor, block_wise=False"
        _chk(
            t.dtype == torch.float32 and t.dim() == 1 and t.numel() == nb and t.is_contiguous(),
            f"{name} of {what} must be a contiguous float32 tensor of shape [{nb}] ({kind}), "
            f"got {t.dtype} of shape {list(t.shape)}",
        )
        _chk(t.device == dev, f"{name} of {what} must be on {dev}, got {t.device}")
    st = slot["steps"]
    _chk(
        isinstance(st, Tensor) and st.dtype == torch.int64 and st.numel() == 1,
        f"step of {what} must be an int64 tensor with one element (the exact step count), got "
        f"{st.dtype if isinstance(st, Tensor) else type(st).__name__}"
        f"{' of shape ' + str(list(st.shape)) if isinstance(st, Tensor) else ''}",
    )
    _chk(st.device == dev, f"step of {what} must be on the parameters' device {dev}, got {st.device}")
    gv = slot["gnorm_vecs"]
    if a.percentile < 100:
        _chk(
            gv is not None,
            f"percentile clipping (percentile={a.percentile}) needs gnorm_vec for {what}, got None",
        )
    if gv is not None:
        _chk(
            gv.dtype == torch.float32 and gv.dim() == 1 and gv.numel() == GNORM_HISTORY and gv.is_contiguous(),
            f"gnorm_vec of {what} must be a contiguous float32 tensor of shape [100], "
            f"got {gv.dtype} of shape {list(gv.shape)}",
        )
        _chk(gv.device == dev, f"gnorm_vec of {what} must be on {dev}, got {gv.device}")
    _check_no_overlap(slot, what)


def _check_shared(a: StepArgs, dev, eight: bool) -> None:
    h = a.hyper
    _chk(isinstance(h, Tensor), f"hyper must be a tensor, got {type(h).__name__}")
    _chk(
        h.dtype == torch.float32 and h.dim() == 1 and h.numel() == len(HYPER_FIELDS) and h.is_contiguous(),
        f"hyper must be a contiguous float32 tensor of shape [5] ({', '.join(HYPER_FIELDS)}), "
        f"got {h.dtype} of shape {list(h.shape)}",
    )
    _chk(h.device == dev, f"hyper must be on the parameters' device {dev}, got {h.device}")
    for name in ("grad_scale", "found_inf"):
        if getattr(a, name) is not None:
            _check_scalar(getattr(a, name), name, dev)
    for name in ("qmap1", "qmap2"):
        q = getattr(a, name)
        if eight:
            _chk(q is not None, f"8-bit state needs {name}, got None")
            _chk(
                q.dtype == torch.float32 and q.dim() == 1 and q.numel() == 256 and q.is_contiguous(),
                f"{name} must be a contiguous float32 tensor of shape [256], got {q.dtype} of shape {list(q.shape)}",
            )
            _chk(q.device == dev, f"{name} must be on {dev}, got {q.device}")
        else:
            _chk(q is None, f"{name} is only used with 8-bit (uint8) state; got a tensor for float32 state")


def slots(a: StepArgs) -> list[dict]:
    """Per-parameter slots (keyed by the list names) of fused_step_multi's arguments; checks
    the list lengths.  With a layout, the slots hold views into the flat buffers."""
    if len(a.layout):
        return _flat_slots(a)
    n = len(a.params)
    for arg in PER_PARAM:
        lst = getattr(a, arg.multi)
        ok = len(lst) == n or (arg.kind == "mutable?" and len(lst) == 0)
        opt = " or none" if arg.kind == "mutable?" else ""
        _chk(ok, f"{arg.multi} must have {n} entries (one per parameter){opt}, got {len(lst)}")
    return [
        {arg.multi: (getattr(a, arg.multi)[i] if len(getattr(a, arg.multi)) else None) for arg in PER_PARAM}
        for i in range(n)
    ]


def _flat_slots(a: StepArgs) -> list[dict]:
    """csrc/fused_step_checks.h flat_slots' twin: per-parameter views of the flat buffers."""
    n = len(a.params)
    _chk(len(a.grads) == n, f"grads must have {n} entries (one per parameter), got {len(a.grads)}")
    _chk(len(a.layout) == 2 * n, f"layout must have {2 * n} ints (slot, offset per parameter), got {len(a.layout)}")
    bufs = {}
    for arg in PER_PARAM[2:]:
        lst = getattr(a, arg.multi)
        need = "exactly one flat buffer" if arg.kind == "mutable" else "one flat buffer or none"
        _chk(len(lst) == 1 or (arg.kind == "mutable?" and len(lst) == 0),
             f"{arg.multi} must hold {need} with a layout, got {len(lst)} tensors")
        if lst:
            t = lst[0]
            _chk(t.dim() == 1 and t.is_contiguous(), f"{arg.multi} must be a contiguous 1-D buffer with a layout, "
                 f"got shape {list(t.shape)}")
            bufs[arg.multi] = t
    out = []
    for i, (p, g) in enumerate(zip(a.params, a.grads)):
        slot, off = a.layout[2 * i], a.layout[2 * i + 1]
        k = p.numel()
        _chk(slot >= 0 and off >= 0 and off % 256 == 0,
             f"layout of params[{i}]: expected a slot >= 0 and an offset >= 0 that is a multiple of 256, "
             f"got slot {slot}, offset {off}")

        def view(name, start, length, shape):
            buf = bufs[name]
            _chk(start + length <= buf.numel(), f"{name}: params[{i}] needs elements [{start}, {start + length}) of "
                 f"the flat buffer, which has {buf.numel()}")
            return buf.narrow(0, start, length).view(shape)

        s = {"params": p, "grads": g}
        for name in ("state1", "state2", "state3"):
            s[name] = view(name, off, k, p.shape) if name in bufs else None
        nb = num_blocks(k, a.block_wise)
        for name in ("absmax1", "absmax2", "absmax3"):
            s[name] = view(name, off // 256 if a.block_wise else slot, nb, (nb,)) if name in bufs else None
        s["steps"] = view("steps", slot, 1, ())
        s["gnorm_vecs"] = view("gnorm_vecs", GNORM_HISTORY * slot, GNORM_HISTORY, (GNORM_HISTORY,)) \
            if "gnorm_vecs" in bufs else None
        out.append(s)
    return out


def _fail(msg: str):
    raise RuntimeError(f"adamw8: {msg}")


def _check_flat(a: StepArgs) -> None:
    """check_call for the flat form: the buffers once, then arithmetic per parameter (no
    views: torch.compile runs the fake kernel several times per graph, and this form is the
    optimizer's, with hundreds of parameters per call).  Messages are built only on failure."""
    n = len(a.params)
    if len(a.grads) != n:
        _fail(f"grads must have {n} entries (one per parameter), got {len(a.grads)}")
    if len(a.layout) != 2 * n:
        _fail(f"layout must have {2 * n} ints (slot, offset per parameter), got {len(a.layout)}")
    if n == 0:
        return
    dev, dtype = a.params[0].device, a.params[0].dtype
    bufs = {}
    for arg in PER_PARAM[2:]:
        lst = getattr(a, arg.multi)
        if not (len(lst) == 1 or (arg.kind == "mutable?" and len(lst) == 0)):
            need = "exactly one flat buffer" if arg.kind == "mutable" else "one flat buffer or none"
            _fail(f"{arg.multi} must hold {need} with a layout, got {len(lst)} tensors")
        if lst:
            t = lst[0]
            if t.dim() != 1 or not t.is_contiguous():
                _fail(f"{arg.multi} must be a contiguous 1-D buffer with a layout, got shape {list(t.shape)}")
            if t.device != dev:
                _fail(f"{arg.multi} must be on the parameters' device {dev}, got {t.device}")
            bufs[arg.multi] = t
    sd = bufs["state1"].dtype
    if sd not in (torch.float32, torch.uint8):
        _fail(f"state1 must be float32 (32-bit state) or uint8 (8-bit state), got {sd}")
    eight = sd == torch.uint8
    for name in ("state2", "state3"):
        if name in bufs and bufs[name].dtype != sd:
            _fail(f"{name} must have state1's dtype {sd}, got {bufs[name].dtype}")
    for name, required in (("absmax1", eight), ("absmax2", eight), ("absmax3", eight and "state3" in bufs)):
        if required != (name in bufs):
            _fail(f"8-bit state needs {name}, got none" if required else
                  f"{name} is only used with the matching 8-bit state; got a buffer where none was expected")
        if name in bufs and bufs[name].dtype != torch.float32:
            _fail(f"{name} must be float32, got {bufs[name].dtype}")
    if bufs["steps"].dtype != torch.int64:
        _fail(f"steps must be int64 (exact step counts), got {bufs['steps'].dtype}")
    if a.percentile < 100 and "gnorm_vecs" not in bufs:
        _fail(f"percentile clipping (percentile={a.percentile}) needs gnorm_vecs, got none")
    if "gnorm_vecs" in bufs and bufs["gnorm_vecs"].dtype != torch.float32:
        _fail(f"gnorm_vecs must be float32, got {bufs['gnorm_vecs'].dtype}")
    room = {k: t.numel() for k, t in bufs.items()}
    for i, (p, g) in enumerate(zip(a.params, a.grads)):
        if p.dtype != dtype or p.device != dev or p.layout != torch.strided:
            _fail(f"one call takes dense parameters of one dtype and device: expected {dtype} on {dev} for "
                  f"params[{i}], got {p.dtype} on {p.device} ({p.layout})")
        if g is None or g.layout != torch.strided or g.dtype != dtype or g.device != dev or g.shape != p.shape:
            _fail(f"grad of params[{i}] must be a dense {dtype} tensor of shape {list(p.shape)} on {dev}, got "
                  + ("None" if g is None else f"{g.dtype} of shape {list(g.shape)} on {g.device} ({g.layout})"))
        slot, off, k = a.layout[2 * i], a.layout[2 * i + 1], p.numel()
        if slot < 0 or off < 0 or off % 256:
            _fail(f"layout of params[{i}]: expected a slot >= 0 and an offset >= 0 that is a multiple of 256, "
                  f"got slot {slot}, offset {off}")
        nb = num_blocks(k, a.block_wise)
        needs = {"state1": off + k, "state2": off + k, "state3": off + k, "steps": slot + 2,
                 "gnorm_vecs": GNORM_HISTORY * (slot + 1)}
        for name in ("absmax1", "absmax2", "absmax3"):
            needs[name] = (off // 256 if a.block_wise else slot) + nb
        for name, end in needs.items():
            if name in room and end > room[name]:
                _fail(f"{name}: params[{i}] needs elements up to {end} of the flat buffer, which has {room[name]}")
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        _fail(f"params must be float32, bfloat16 or float16, got {dtype}")
    _check_layout_disjoint(a)
    if n > 1:  # the state regions are disjoint by the layout: the parameters remain
        _check_slots_disjoint([[(p, "parameter")] for p in a.params])
    _check_shared(a, dev, eight)


def check_call(a: StepArgs) -> None:
    """Python twin of csrc/fused_step_checks.h: raises before anything is written."""
    _chk(isinstance(a.percentile, int) and 1 <= a.percentile <= 100,
         f"percentile must be in 1..100, got {a.percentile}")
    if len(a.layout):
        _check_flat(a)
        return
    ss = slots(a)
    if not ss:
        return ss
    first = ss[0]
    for i, s in enumerate(ss):
        what = "param" if len(ss) == 1 else f"params[{i}]"
        _chk(
            s["params"].device == first["params"].device,
            f"one call takes parameters of one device: expected {first['params'].device} for {what}, "
            f"got {s['params'].device}",
        )
        _chk(
            s["params"].dtype == first["params"].dtype,
            f"one call takes parameters of one dtype: expected {first['params'].dtype} for {what}, "
            f"got {s['params'].dtype}",
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
        _check_slot(s, a, what)
    if len(ss) > 1:
        _check_slots_disjoint([[(s[key], name) for key, name in _WRITTEN if key != "grads"] for s in ss])
    _check_shared(a, first["params"].device, first["state1"].dtype == torch.uint8)


@torch.library.register_fake("adamw8::fused_step_multi")
def _fused_step_multi_fake(*args, **kwargs):
    check_call(multi_args(*args, **kwargs))


@torch.library.register_fake("adamw8::fused_step")
def _fused_step_fake(*args, **kwargs):
    check_call(single_to_multi(*args, **kwargs))


# fused_step is fused_step_multi with one parameter, on every backend: one kernel-bearing op.
@torch.library.impl(_lib, "fused_step", "CompositeExplicitAutograd")
def _fused_step_impl(*args, **kwargs):
    torch.ops.adamw8.fused_step_multi(*single_to_multi(*args, **kwargs))


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
