"""State-dict conversion and validation (docs/design.md, "Checkpoints").

Layout: torch's ``{"state": {index: {...}}, "param_groups": [...]}`` with
bitsandbytes' per-parameter keys (``step``, ``state1``, ``state2``,
``qmap1``, ``qmap2``, ``absmax1``, ``absmax2``; ``state3``/``absmax3`` with
amsgrad; ``gnorm_vec`` with percentile clipping).  ``step`` is saved as an
int and ``lr`` as a float, as bitsandbytes saves them, so the dict loads into
bitsandbytes too.  On load, bitsandbytes >= 0.49.2's nested
``"__bnb_optimizer_quant_state__"`` layout is accepted as well, and so is torch.optim.AdamW's
(``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``): its fp32 moments become the state in the
format the optimizer's config asks for (quantized where that is 8-bit; 32-bit for a sharded
parameter, whose 8-bit blocks are its shard's).
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

from ..ops import GNORM_HISTORY
from .buckets import absmax_shape, history_shape, is_sharded
from .config import check_bool, check_hyper

BNB_NESTED_KEY = "__bnb_optimizer_quant_state__"
_STATE_KEYS = ("state1", "state2", "state3")
_ABSMAX_KEYS = ("absmax1", "absmax2", "absmax3")
# torch.optim.AdamW's state keys and the bitsandbytes keys they become, with the map's sign
_TORCH_KEYS = (("exp_avg", "state1", True), ("exp_avg_sq", "state2", False), ("max_exp_avg_sq", "state3", False))
# keys of torch's param groups that mean nothing here (maximize and decoupled_weight_decay are
# checked first: adamw8 neither maximizes nor applies weight decay as an L2 term)
_TORCH_GROUP_KEYS = ("foreach", "fused", "capturable", "differentiable", "maximize", "decoupled_weight_decay")


def export_state_dict(sd: dict) -> dict:
    """Copy torch's packed state dict (whose per-param dicts alias live state) into the saved form."""
    state = {}
    for idx, st in sd["state"].items():
        st = dict(st)
        if isinstance(st.get("step"), Tensor):
            st["step"] = int(st["step"].item())
        state[idx] = st
    groups = []
    for g in sd["param_groups"]:
        g = dict(g)
        if isinstance(g.get("lr"), Tensor):
            g["lr"] = float(g["lr"].item())
        groups.append(g)
    extra = {k: v for k, v in sd.items() if k not in ("state", "param_groups")}  # e.g. from post-hooks
    return {"state": state, "param_groups": groups, **extra}


def _fail(where: str, msg: str):
    raise ValueError(f"load_state_dict: {where}: {msg}")


def _tensor(where: str, st: dict, key: str) -> Tensor:
    v = st.get(key)
    if not isinstance(v, Tensor):
        _fail(where, f"expected a tensor for {key!r}, got {type(v).__name__}")
    return v


def _step_value(where: str, v) -> int:
    if isinstance(v, Tensor):
        if v.numel() != 1:
            _fail(where, f"expected a scalar 'step', got a tensor of shape {tuple(v.shape)}")
        v = v.detach().cpu().reshape(()).item()
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        _fail(where, f"expected 'step' as an int, float or tensor, got {type(v).__name__}")
    if not (math.isfinite(v) and v >= 0 and v == int(v)):
        _fail(where, f"expected a non-negative whole 'step', got {v}")
    return int(v)


def _gathered_table(where: str, name: str, table: Tensor, p: Tensor, block_wise: bool) -> Tensor:
    """The [shards, n] absmax table of a sharded run, gathered to one tensor, as the [blocks]
    of an unsharded parameter: exact when every shard was the same whole number of 256-element
    blocks (the blocks are then the unsharded ones, in order); anything else cannot be
    re-blocked without dequantizing, and fails."""
    shards, n = table.shape
    if block_wise and shards * n * 256 == p.numel():
        return table.reshape(-1)
    _fail(where, f"{name} is a [{shards}, {n}] table of a sharded run whose shards are not all the same whole "
                 f"number of 256-element blocks of this {p.numel()}-element parameter: its 8-bit blocks cannot be "
                 "re-blocked; load it at the same sharding")


def _from_torch_adamw(opt, p: Tensor, conf: dict, st: dict, where: str) -> dict:
    """torch.optim.AdamW's state of one parameter in bitsandbytes' keys: the moments as fp32
    (torch keeps them in the parameter's dtype), quantized with the optimizer's maps where its
    config gives the parameter 8-bit state and it is not sharded."""
    out = {"step": st["step"]} if "step" in st else {}
    eight = (conf["optim_bits"] == 8 and p.numel() >= conf["min_8bit_size"] and not is_sharded(p))
    for key, name, signed in _TORCH_KEYS:
        if key not in st:
            continue
        t = _tensor(where, st, key)
        if not t.is_floating_point() or t.shape != p.shape:
            _fail(where, f"expected {key} as a floating tensor of the parameter's shape {tuple(p.shape)}, got "
                         f"{t.dtype} of shape {tuple(t.shape)}")
        t = t.detach().to(dtype=torch.float32)  # copied onto the parameter's device by _rebuild
        if not eight:
            out[name] = t
            continue
        qmaps = opt._get_qmaps(p.device)
        codes, absmax = torch.ops.adamw8.quantize(t.to(p.device).contiguous(), qmaps[0 if signed else 1],
                                                  conf["block_wise"], signed)
        out[name], out["absmax" + name[-1]] = codes, absmax
        out["qmap1"], out["qmap2"] = qmaps
    return out


def _import_param_state(opt, p: Tensor, conf: dict, amsgrad: bool, st: dict, where: str) -> dict:
    """Validated, copied state for one parameter, on the parameter's device."""
    if not isinstance(st, dict):
        _fail(where, f"expected a dict of state, got {type(st).__name__}")
    st = dict(st)
    st.update(st.pop(BNB_NESTED_KEY, {}) or {})  # bnb >= 0.49.2 nests the quantization state
    if "state1" not in st and "exp_avg" in st:
        st = _from_torch_adamw(opt, p, conf, st, where)
    if "step" not in st:
        _fail(where, "missing 'step'")
    dev = p.device
    out = {"step": torch.tensor(_step_value(where, st["step"]), dtype=torch.int64, device=dev)}
    s1 = _tensor(where, st, "state1")
    if s1.dtype not in (torch.float32, torch.uint8):
        _fail(where, f"expected state1 of dtype float32 (32-bit) or uint8 (8-bit), got {s1.dtype}")
    eight = s1.dtype == torch.uint8
    names = _STATE_KEYS if amsgrad else _STATE_KEYS[:2]
    if amsgrad and "state3" not in st:
        _fail(where, "the optimizer uses amsgrad but the checkpoint has no 'state3' (max of v; "
                     "torch.optim.AdamW's max_exp_avg_sq)")
    for name in names:
        t = _tensor(where, st, name)
        if t.dtype != s1.dtype:
            _fail(where, f"expected {name} of dtype {s1.dtype} (as state1), got {t.dtype}")
        if t.shape != p.shape:
            _fail(where, f"expected {name} of the parameter's shape {tuple(p.shape)}, got {tuple(t.shape)}")
        out[name] = t.detach()  # copied into the optimizer's buffers by _rebuild
    if eight:
        shape = absmax_shape(p, conf["block_wise"])
        nb = math.prod(shape)
        for name, signed in (("qmap1", True), ("qmap2", False)):
            q = _tensor(where, st, name)
            ours = opt._get_qmaps(dev)[0 if signed else 1]
            if q.dtype != torch.float32 or q.shape != (256,) or not torch.equal(q.detach().to(dev), ours):
                _fail(where, f"{name} is not bitsandbytes' {'signed' if signed else 'unsigned'} dynamic map "
                             "(docs/design.md, Maps)")
            out[name] = ours
        for name in _ABSMAX_KEYS if amsgrad else _ABSMAX_KEYS[:2]:
            a = _tensor(where, st, name)
            if len(shape) == 1 and a.dim() == 2 and not is_sharded(a):
                a = _gathered_table(where, name, a, p, conf["block_wise"])
            if a.dtype != torch.float32 or a.numel() != nb or (len(shape) == 2 and tuple(a.shape) != shape):
                kind = "256-element blocks" if conf["block_wise"] else "one per tensor (block_wise=False)"
                if len(shape) == 2:
                    kind += f", a [{shape[0]}, {shape[1]}] table: one row per shard"
                _fail(where, f"expected {name} of dtype float32 with {nb} values ({kind}), got {a.dtype} "
                             f"of shape {tuple(a.shape)}")
            out[name] = a.detach()  # copied, per shard, by the optimizer's buckets
    if conf["percentile_clipping"] < 100:
        gv = st.get("gnorm_vec")
        if gv is None:
            # No history (e.g. a bitsandbytes >= 0.50 checkpoint): +inf slots never
            # clip, and real norms replace them one step at a time.
            out["gnorm_vec"] = torch.full((GNORM_HISTORY,), math.inf, dtype=torch.float32, device=dev)
        else:
            if not isinstance(gv, Tensor) or gv.dtype != torch.float32 or gv.numel() != math.prod(history_shape(p)):
                _fail(where, f"expected gnorm_vec as a float32 tensor of {math.prod(history_shape(p))} values "
                             "(100 per shard)")
            out["gnorm_vec"] = gv.detach()
    return out


def _nonfinite(st: dict) -> list[tuple[str, int, int]]:
    """(key, non-finite count, size) of each float32 state or absmax tensor of an imported
    parameter state that holds NaN or inf (a DTensor: its local shard)."""
    found = []
    for name in _STATE_KEYS + _ABSMAX_KEYS:
        t = st.get(name)
        if t is None or t.dtype != torch.float32:
            continue
        local = t.to_local() if hasattr(t, "to_local") else t
        if bool(torch.isfinite(local.sum())):  # no temporary: a NaN or inf makes the sum NaN or inf
            continue
        bad = int((~torch.isfinite(local)).sum().item())  # also 0 where only the sum overflowed
        if bad:
            found.append((name, bad, local.numel()))
    return found


def _warn_nonfinite(found: dict) -> None:
    """One warning for a checkpoint whose state holds NaN or inf: the step will reset those
    elements (the non-finite rule) rather than spread them, so loading goes on, but not in
    silence."""
    where, items = next(iter(found.items()))
    first = ", ".join(f"{name}: {bad} of {size} values" for name, bad, size in items)
    warnings.warn(
        f"load_state_dict: the checkpoint's state holds NaN or inf for {len(found)} parameter(s) (first: {where}, "
        f"{first}). The next step resets the moments of those elements to 0 (8-bit state: every element of a "
        "block whose absmax is not finite) and keeps their parameters, as it does for a non-finite gradient "
        "(docs/design.md, Non-finite values).",
        RuntimeWarning,
        stacklevel=4,
    )


def import_state_dict(opt, state_dict: dict) -> tuple[dict, list[dict]]:
    """Check and convert a whole state dict; returns (state by param, group values)."""
    if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
        raise ValueError("load_state_dict: expected a dict with 'state' and 'param_groups'")
    groups, saved = opt.param_groups, state_dict["param_groups"]
    if len(groups) != len(saved):
        raise ValueError(
            f"load_state_dict: expected {len(groups)} parameter groups, the checkpoint has {len(saved)}"
        )
    for i, (g, s) in enumerate(zip(groups, saved)):
        if len(g["params"]) != len(s["params"]):
            raise ValueError(
                f"load_state_dict: param_groups[{i}] has {len(g['params'])} parameters, "
                f"the checkpoint's has {len(s['params'])}"
            )
    group_values = []
    for i, (g, s) in enumerate(zip(groups, saved)):
        values = {k: v for k, v in s.items() if k != "params"}
        if values.get("maximize"):
            raise ValueError(f"load_state_dict: param_groups[{i}]: the checkpoint maximizes (maximize=True); "
                             "adamw8 minimizes")
        if values.get("decoupled_weight_decay") is False and values.get("weight_decay", 0):
            raise ValueError(f"load_state_dict: param_groups[{i}]: the checkpoint's weight decay is an L2 term "
                             "(torch.optim.Adam's, decoupled_weight_decay=False); adamw8 decouples it as AdamW")
        for k in _TORCH_GROUP_KEYS:
            values.pop(k, None)
        merged = {k: values.get(k, g[k]) for k in ("lr", "betas", "eps", "weight_decay")}
        if isinstance(merged["betas"], list):
            merged["betas"] = values["betas"] = tuple(merged["betas"])
        try:
            check_hyper(**merged)
            check_bool("amsgrad", values.get("amsgrad", g["amsgrad"]))
        except (TypeError, ValueError) as e:
            raise ValueError(f"load_state_dict: param_groups[{i}]: {e}") from None
        group_values.append(values)
    index = {}
    for gi, (g, s) in enumerate(zip(groups, saved)):
        for pi, (p, saved_id) in enumerate(zip(g["params"], s["params"])):
            index[saved_id] = (gi, pi, p)
    new_state, nonfinite = {}, {}
    for key, st in state_dict["state"].items():
        if key not in index:
            raise ValueError(f"load_state_dict: state for parameter id {key!r}, which no group lists")
        gi, pi, p = index[key]
        group = groups[gi]
        amsgrad = group_values[gi].get("amsgrad", group["amsgrad"])
        conf = opt._config(gi, pi, p)
        where = f"param_groups[{gi}]['params'][{pi}]"
        new_state[p] = _import_param_state(opt, p, conf, amsgrad, st, where)
        found = _nonfinite(new_state[p])
        if found:
            nonfinite[where] = found
    if nonfinite:
        _warn_nonfinite(nonfinite)
    return new_state, group_values
