"""The AdamW optimizer family: param groups, state, one op call per bucket (docs/design.md).

State is created when a parameter joins the optimizer (construction, ``add_param_group``,
``load_state_dict``; a GlobalOptimManager override given later re-creates the state of a
parameter that has not stepped yet).  The parameters of each group are split into buckets
of one (device, dtype, state format, option set); ``step()`` makes one
``torch.ops.adamw8.fused_step_multi`` call per bucket (or per chunk of one), over the
parameters that have a gradient.  It reads nothing but the buckets: no Python loop calls a
kernel per parameter, nothing synchronises with the host, and torch.compile traces
``step()`` with ``fullgraph=True`` without guarding on any hyperparameter's value
(groups.py says how hyperparameters reach the kernels).
"""

from __future__ import annotations

import types
import warnings
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..ops import GNORM_HISTORY, StepArgs
from ..ops.reference import num_blocks
from . import state_dict as sd_io
from .config import HYPER_KEYS, Options, as_float32_scalar, check_bool, check_hyper, resolve_options
from .groups import HyperTensors, ParamGroup, hyper_values, normalise
from .manager import GlobalOptimManager

_PARAM_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@dataclass
class Bucket:
    """Parameters of one group that one op call can update together, with their state."""

    gindex: int
    names: list = field(default_factory=list)  # "param_groups[i]['params'][j]" per parameter, for messages
    params: list = field(default_factory=list)
    state: dict = field(default_factory=dict)  # state key -> one tensor per parameter ([] when unused)
    qmaps: tuple = (None, None)
    hyper: Tensor | None = None
    block_wise: bool = True
    percentile: int = 100


class AdamWBase(torch.optim.Optimizer):
    """Shared implementation of the six public classes (see ``adamw.py`` for their docs)."""

    # GradScaler hands us grad_scale/found_inf as device tensors: the kernels unscale and
    # skip in-kernel, with no host sync.
    _step_supports_amp_scaling = True

    # Tensors per fused_step_multi call.  Compiled: compile time grows faster than
    # linearly with the size of one call (Inductor walks a call's whole argument list for
    # each of its outputs): on the 201-tensor set, calls of 32 compiled fastest
    # (benchmarks/RESULTS.md).  Eager: as many as one CUDA launch takes
    # (csrc/fused_step_cuda.h kMaxTensorsPerLaunch), the fewest launches.
    _tensors_per_call = 32
    _tensors_per_call_eager = 64

    _STATE_LISTS = ("state1", "state2", "state3", "absmax1", "absmax2", "absmax3", "step", "gnorm_vec")

    def __init__(
        self,
        params,
        lr=1e-3,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=1e-2,
        amsgrad=False,
        optim_bits=32,
        args=None,
        min_8bit_size=4096,
        percentile_clipping=100,
        block_wise=True,
        is_paged=False,
    ):
        check_hyper(lr, betas, eps, weight_decay)
        check_bool("amsgrad", amsgrad)
        self.options: Options = resolve_options(
            args,
            optim_bits=optim_bits,
            min_8bit_size=min_8bit_size,
            percentile_clipping=percentile_clipping,
            block_wise=block_wise,
            is_paged=is_paged,
        )
        # bnb exposes the effective options as ``opt.args``.
        self.args = types.SimpleNamespace(**self.options.__dict__)
        self.mng = GlobalOptimManager.get_instance()
        self._qmaps: dict[torch.device, tuple[Tensor, Tensor]] = {}
        self._param_conf: dict[Tensor, dict] = {}
        self._hp_overrides: list[dict] = []
        self._hyper = HyperTensors()
        self._buckets: list[Bucket] = []
        # a one-element list: torch.compile replays a list's mutation after the graph, not an
        # attribute store on an optimizer
        self._stepped = [False]
        defaults = dict(lr=normalise("lr", lr), betas=normalise("betas", betas), eps=normalise("eps", eps),
                        weight_decay=normalise("weight_decay", weight_decay), amsgrad=amsgrad)
        super().__init__(params, defaults)
        self.mng._watch(self)
        if self.options.is_paged and any(p.is_cuda for g in self.param_groups for p in g["params"]):
            warnings.warn(
                "adamw8: paged state is not implemented for CUDA yet; the state stays in device memory",
                RuntimeWarning,
                stacklevel=3,
            )

    # ------------------------------------------------------------------ groups
    def add_param_group(self, param_group: dict) -> None:
        if any(k in param_group for k in HYPER_KEYS):  # the defaults were checked in __init__
            check_hyper(**{k: param_group.get(k, self.defaults[k]) for k in HYPER_KEYS})
        if "amsgrad" in param_group:
            check_bool("amsgrad", param_group["amsgrad"])
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        for i, p in enumerate(group["params"]):
            if p.dtype not in _PARAM_DTYPES:
                del self.param_groups[-1]
                raise TypeError(f"params[{i}]: expected a float32, bfloat16 or float16 tensor, got {p.dtype}")
            if p.device.type == "meta":
                del self.param_groups[-1]
                raise ValueError(
                    f"params[{i}]: expected a materialised parameter, got one on the meta device; build the "
                    "optimizer after the model's parameters exist (e.g. after module.to_empty(device=...) and "
                    "their initialisation), then load its state with load_state_dict"
                )
        for key in HYPER_KEYS:
            group[key] = normalise(key, group[key])
        self.param_groups[-1] = ParamGroup(group).attach(self)
        gindex = len(self.param_groups) - 1
        for pi, p in enumerate(group["params"]):
            self._init_state(p, self._config(gindex, pi, p), group["amsgrad"])
        self._rebuild()

    def _group_changed(self, group: dict, key: str) -> None:
        """A key of a group was set (ParamGroup.__setitem__): hyperparameters go to the
        device tensors; amsgrad adds or drops the max(v) state."""
        gindex = next((i for i, g in enumerate(self.param_groups) if g is group), None)
        if gindex is None:
            return
        if key in HYPER_KEYS:
            for k in self._hyper.keys_of_group(gindex):
                self._hyper.refresh(k, self._hyper_values(gindex, k[1]))
        elif key == "amsgrad":
            check_bool("amsgrad", group["amsgrad"])
            for p in group["params"]:
                self._set_amsgrad(p, group["amsgrad"])
            self._rebuild()

    def _hyper_values(self, gindex: int, hp: int) -> list[float]:
        return hyper_values(self.param_groups[gindex], self._hp_overrides[hp] if hp >= 0 else None)

    # ------------------------------------------------------------- per param
    def _config(self, gindex: int, pindex: int, p: Tensor, refresh: bool = False) -> dict:
        """Options and hyperparameters of one parameter (overrides applied), cached."""
        conf = None if refresh else self._param_conf.get(p)
        if conf is None:
            o = self.options
            conf = dict(
                optim_bits=o.optim_bits,
                min_8bit_size=o.min_8bit_size,
                percentile_clipping=o.percentile_clipping,
                block_wise=o.block_wise,
            )
            over = self.mng.overrides_for(gindex, pindex, p)
            conf.update({k: v for k, v in over.items() if k in conf})
            hyper = {k: normalise(k, v) for k, v in over.items() if k in HYPER_KEYS}
            conf["hp"] = -1
            if hyper:
                if hyper not in self._hp_overrides:
                    self._hp_overrides.append(hyper)
                conf["hp"] = self._hp_overrides.index(hyper)
            self._param_conf[p] = conf
        return conf

    def _get_qmaps(self, device: torch.device) -> tuple[Tensor, Tensor]:
        if device not in self._qmaps:
            maps = (
                torch.ops.adamw8.create_dynamic_map(True).to(device),
                torch.ops.adamw8.create_dynamic_map(False).to(device),
            )
            for q in maps:
                torch._dynamo.mark_static_address(q)
            self._qmaps[device] = maps
        return self._qmaps[device]

    def _init_state(self, p: Tensor, conf: dict, amsgrad: bool) -> None:
        """Fresh state for ``p`` with bnb's key names (docs/design.md, "State")."""
        dev, n = p.device, p.numel()
        eight = conf["optim_bits"] == 8 and n >= conf["min_8bit_size"]
        sdtype = torch.uint8 if eight else torch.float32
        state = self.state[p]
        state.clear()
        state["step"] = torch.zeros((), dtype=torch.int64, device=dev)  # exact past 2^24 steps
        for name in ("state1", "state2", "state3") if amsgrad else ("state1", "state2"):
            # contiguous, whatever the parameter's strides: kernels use flat order
            state[name] = torch.zeros(p.shape, dtype=sdtype, device=dev)
        if eight:
            state["qmap1"], state["qmap2"] = self._get_qmaps(dev)
            nb = num_blocks(n, conf["block_wise"])
            for name in ("absmax1", "absmax2", "absmax3") if amsgrad else ("absmax1", "absmax2"):
                state[name] = torch.zeros((nb,), dtype=torch.float32, device=dev)
        if conf["percentile_clipping"] < 100:
            state["gnorm_vec"] = torch.zeros((GNORM_HISTORY,), dtype=torch.float32, device=dev)

    def _set_amsgrad(self, p: Tensor, on: bool) -> None:
        st = self.state[p]
        if on and "state3" not in st:
            st["state3"] = torch.zeros_like(st["state1"])
            if "absmax1" in st:
                st["absmax3"] = torch.zeros_like(st["absmax1"])
        elif not on:
            st.pop("state3", None)
            st.pop("absmax3", None)

    def _overrides_changed(self) -> None:
        """GlobalOptimManager's overrides changed: parameters that have not stepped take
        their new config (bitsandbytes reads overrides when it creates state, at the first
        step); a parameter that has stepped keeps its state, with a warning."""
        changed = False
        for gi, group in enumerate(self.param_groups):
            for pi, p in enumerate(group["params"]):
                old = self._param_conf.get(p)
                new = self._config(gi, pi, p, refresh=True)
                if old is None or old == new:
                    continue
                if int(self.state[p]["step"]) == 0:  # a host read, at configuration time only
                    self._init_state(p, new, group["amsgrad"])
                else:
                    self._param_conf[p] = old
                    warnings.warn(
                        f"adamw8: param_groups[{gi}]['params'][{pi}] has stepped: its new config override is "
                        "ignored (overrides apply when state is created)",
                        UserWarning,
                        stacklevel=3,
                    )
                changed = True
        if changed:
            self._rebuild()

    # ----------------------------------------------------------------- buckets
    def _rebuild(self) -> None:
        """The buckets, from the parameters and their state (after any change of either)."""
        buckets: dict = {}
        for gi, group in enumerate(self.param_groups):
            for pi, p in enumerate(group["params"]):
                st = self.state[p]
                conf = self._config(gi, pi, p)
                key = (gi, p.device, p.dtype, st["state1"].dtype, "state3" in st, conf["block_wise"],
                       conf["percentile_clipping"], conf["hp"])
                b = buckets.get(key)
                if b is None:
                    eight = st["state1"].dtype == torch.uint8
                    b = buckets[key] = Bucket(
                        gindex=gi,
                        state={name: [] for name in self._STATE_LISTS},
                        qmaps=self._get_qmaps(p.device) if eight else (None, None),
                        hyper=self._hyper.get((gi, conf["hp"], p.device), self._hyper_values(gi, conf["hp"])),
                        block_wise=conf["block_wise"],
                        percentile=conf["percentile_clipping"],
                    )
                b.names.append(f"param_groups[{gi}]['params'][{pi}]")
                b.params.append(p)
                for name in self._STATE_LISTS:
                    if name in st:
                        torch._dynamo.mark_static_address(st[name])  # CUDA graphs read state in place
                        b.state[name].append(st[name])
        self._buckets = list(buckets.values())

    # -------------------------------------------------------------------- step
    def _check_grads(self) -> None:
        """Every gradient is checked before any parameter or state changes."""
        for b in self._buckets:
            for where, p in zip(b.names, b.params):
                g = p.grad
                if g is None:
                    continue
                if g.is_sparse or g.layout != torch.strided:
                    raise RuntimeError(f"{where}: expected a dense gradient, got layout {g.layout}")
                if g.dtype != p.dtype:
                    raise TypeError(f"{where}: expected a gradient of dtype {p.dtype}, got {g.dtype}")
                if g.shape != p.shape:
                    raise RuntimeError(f"{where}: expected a gradient of shape {tuple(p.shape)}, got {tuple(g.shape)}")
                if g.device != p.device:
                    raise RuntimeError(f"{where}: expected a gradient on {p.device}, got {g.device}")

    @torch.no_grad()
    def step(self, closure=None):
        """One AdamW step for every parameter with a gradient; returns the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._check_grads()
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        k = self._tensors_per_call if torch.compiler.is_compiling() else self._tensors_per_call_eager
        for b in self._buckets:
            live = [i for i, p in enumerate(b.params) if p.grad is not None]
            if not live:
                continue
            dev = b.params[0].device
            gs = None if grad_scale is None else as_float32_scalar(grad_scale, dev)
            fi = None if found_inf is None else as_float32_scalar(found_inf, dev)
            for c in range(0, len(live), k):
                idx = live[c : c + k]
                lists = {name: [t[i] for i in idx] if t else [] for name, t in b.state.items()}
                torch.ops.adamw8.fused_step_multi(*StepArgs(
                    params=[b.params[i] for i in idx],
                    grads=[b.params[i].grad for i in idx],
                    state1=lists["state1"], state2=lists["state2"], state3=lists["state3"],
                    absmax1=lists["absmax1"], absmax2=lists["absmax2"], absmax3=lists["absmax3"],
                    qmap1=b.qmaps[0], qmap2=b.qmaps[1], steps=lists["step"], gnorm_vecs=lists["gnorm_vec"],
                    hyper=b.hyper, block_wise=b.block_wise, percentile=b.percentile, grad_scale=gs, found_inf=fi,
                ))
        self._stepped[0] = True
        return loss

    # LR schedulers wrap ``opt.step`` in a function Dynamo refuses to trace,
    # which would break ``torch.compile(opt.step, fullgraph=True)`` once a
    # scheduler exists.  Marking step as already wrapped keeps it unwrapped.
    # The wrapper's only job, recording ``_opt_called`` for the scheduler's
    # order check, is done by ``step`` itself.
    step._wrapped_by_lr_sched = True

    @property
    def _opt_called(self) -> bool:
        return self._stepped[0]

    @_opt_called.setter
    def _opt_called(self, value) -> None:
        pass

    # ------------------------------------------------------------ copy, pickle
    # torch.optim.Optimizer pickles only defaults, state and param_groups; the
    # options, per-parameter configs and override lists travel too, and the groups,
    # device hyperparameters and buckets are rebuilt, so a deepcopy or an unpickled
    # optimizer steps exactly like the original.
    _EXTRA_STATE = ("options", "args", "_qmaps", "_param_conf", "_hp_overrides", "_stepped")

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["param_groups"] = [dict(g) for g in state["param_groups"]]
        state.update({k: self.__dict__[k] for k in self._EXTRA_STATE})
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.mng = GlobalOptimManager.get_instance()  # a process-wide singleton, not pickled
        self.mng._watch(self)
        self._hyper = HyperTensors()
        self.param_groups = [ParamGroup(g).attach(self) for g in self.param_groups]
        self._rebuild()

    # -------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        """torch's layout with bnb's per-parameter keys; ``step`` as an int (bnb-loadable).
        Keys that state-dict post-hooks add are kept."""
        return sd_io.export_state_dict(super().state_dict())

    def load_state_dict(self, state_dict: dict) -> None:
        """Load an adamw8 or bitsandbytes (>= 0.44; flat or nested) state dict.

        Everything is checked before anything changes; a mismatch in group or
        parameter count, shape, dtype or block count raises ``ValueError``.
        Loaded tensors are copied (the optimizer never aliases the dict's tensors).
        Parameters without state in the checkpoint start afresh.
        """
        for hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = hook(self, state_dict)
            if result is not None:
                state_dict = result
        new_state, group_values = sd_io.import_state_dict(self, state_dict)
        for gi, group in enumerate(self.param_groups):
            for pi, p in enumerate(group["params"]):
                if p in new_state:
                    self.state[p] = new_state[p]
                else:
                    self._init_state(p, self._config(gi, pi, p), group_values[gi].get("amsgrad", group["amsgrad"]))
        for group, values in zip(self.param_groups, group_values):
            for key, value in values.items():
                group[key] = value
        self._rebuild()
        for hook in self._optimizer_load_state_dict_post_hooks.values():
            hook(self)
