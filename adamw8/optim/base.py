"""The AdamW optimizer family: param groups, state, one op call per bucket (docs/design.md).

State is created when a parameter joins the optimizer (construction, ``add_param_group``,
``load_state_dict``; a GlobalOptimManager override given later re-creates the state of a
parameter that has not stepped yet), except for a frozen one (``requires_grad=False``, no
gradient, no state): its state is made at the first eager step that finds it with a gradient,
as torch and bitsandbytes make all state at a parameter's first step, so frozen weights handed
to the optimizer (``model.parameters()`` of a model with adapters) cost no state memory. The
parameters of each group are split into buckets of one (device, dtype, state format, option
set); ``step()`` makes one ``torch.ops.adamw8.fused_step_multi`` call per bucket (or per chunk
of one), over the parameters that have a gradient. It reads nothing but the buckets: no Python
loop calls a kernel per parameter, nothing synchronises with the host, and torch.compile traces
``step()`` with ``fullgraph=True`` without guarding on any hyperparameter's value (groups.py
says how hyperparameters reach the kernels).
"""

from __future__ import annotations

import types
import warnings
import torch
from torch import Tensor

from .. import paging, tuning
from ..ops import StepArgs
from . import state_dict as sd_io
from .buckets import Bucket, is_sharded, local, pack
from .config import HYPER_KEYS, Options, as_float32_scalar, check_bool, check_hyper, resolve_options
from .groups import HyperTensors, ParamGroup, hyper_values, normalise, warn_if_tensor_lr
from .manager import GlobalOptimManager

_PARAM_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class AdamWBase(torch.optim.Optimizer):
    """Shared implementation of the six public classes (see ``adamw.py`` for their docs)."""

    # GradScaler hands us grad_scale/found_inf as device tensors: the kernels unscale and
    # skip in-kernel, with no host sync.
    _step_supports_amp_scaling = True

    # Tensors per fused_step_multi call.  Compiled: 32, chosen when compile time grew faster
    # than linearly with the size of one call; with torch 2.13 on the CPU, calls of 32, 64 and
    # 128 compile in the same time (benchmarks/RESULTS.md, 2026-11-28), and
    # scripts/compile_gap_probe.py compares 32 and 64 on a GPU before this changes.  Eager: as
    # many as one CUDA launch takes (csrc/fused_step_cuda.h kMaxTensorsPerLaunch), the fewest
    # launches.
    _tensors_per_call = 32
    _tensors_per_call_eager = 64

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
        self._frozen: list[tuple[int, int, Tensor]] = []  # (group, index, parameter): frozen, no state yet
        self._groups_seen: list[dict] = []  # param_groups as the buckets were made from
        # a one-element list: torch.compile replays a list's mutation after the graph, not an
        # attribute store on an optimizer
        self._stepped = [False]
        self._paged_out = [False]  # page_out() was called and no page-in since (paging.py)
        warn_if_tensor_lr(lr)
        defaults = dict(lr=normalise("lr", lr), betas=normalise("betas", betas), eps=normalise("eps", eps),
                        weight_decay=normalise("weight_decay", weight_decay), amsgrad=amsgrad)
        super().__init__(params, defaults)
        self.mng._watch(self)
        for dev in {p.device for g in self.param_groups for p in g["params"]}:
            tuning.load_for_device(dev)  # a GPU's shipped launch configs, once per process
            if self.options.is_paged:  # where paging is a no-op (the CPU), say so once
                paging.pager_for(dev)

    # ------------------------------------------------------------------ groups
    def add_param_group(self, param_group: dict) -> None:
        if not isinstance(param_group, dict) or "params" not in param_group:
            raise TypeError("add_param_group: expected a dict with a 'params' entry (a tensor or a list of them), "
                            f"got {param_group!r:.200}")
        warn_if_tensor_lr(param_group.get("lr"))
        if any(k in param_group for k in HYPER_KEYS):  # the defaults were checked in __init__
            check_hyper(**{k: param_group.get(k, self.defaults[k]) for k in HYPER_KEYS})
        if "amsgrad" in param_group:
            check_bool("amsgrad", param_group["amsgrad"])
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            self._check_params(group["params"])
        except (TypeError, ValueError):
            del self.param_groups[-1]
            raise
        for key in HYPER_KEYS:
            group[key] = normalise(key, group[key])
        self.param_groups[-1] = ParamGroup(group).attach(self)
        gindex = len(self.param_groups) - 1
        for p in group["params"]:
            self.state[p] = {}  # fresh: _rebuild creates zero state in the format _config says
        self._rebuild([gindex])

    @staticmethod
    def _check_params(params: list) -> None:
        for i, p in enumerate(params):
            if not isinstance(p, Tensor):
                raise TypeError(f"params[{i}]: expected a tensor, got {type(p).__name__}")
            if p.dtype not in _PARAM_DTYPES:
                raise TypeError(f"params[{i}]: expected a float32, bfloat16 or float16 tensor, got {p.dtype}")
            if p.device.type == "meta":
                raise ValueError(
                    f"params[{i}]: expected a materialised parameter, got one on the meta device; build the "
                    "optimizer after the model's parameters exist (e.g. after module.to_empty(device=...) and "
                    "their initialisation), then load its state with load_state_dict"
                )

    def _checked_group_params(self, group: dict, value) -> list:
        """A new ``group["params"]`` (ParamGroup.__setitem__): a list of float tensors, none of
        them in another group; the group's state is then re-packed (_group_changed), so the
        new parameters are stepped and the ones that stay keep their state."""
        params = [value] if isinstance(value, Tensor) else list(value)
        self._check_params(params)
        self._check_disjoint([params if g is group else g["params"] for g in self.param_groups])
        return params

    @staticmethod
    def _check_disjoint(param_lists: list) -> None:
        """No parameter in two groups (torch's add_param_group refuses it with this message)."""
        seen: set = set()
        for params in param_lists:
            ids = {id(p) for p in params}
            if ids & seen:
                raise ValueError("some parameters appear in more than one parameter group")
            seen |= ids

    def _refresh_hyper(self, gindex: int) -> None:
        """The device tensors of group ``gindex`` take its current values."""
        for k in self._hyper.keys_of_group(gindex):
            self._hyper.refresh(k, self._hyper_values(gindex, k[1]))

    def _drop_orphan_state(self) -> None:
        """The state of a parameter that left every group goes (torch's state_dict could not
        number it)."""
        kept = {id(p) for g in self.param_groups for p in g["params"]}
        for p in [p for p in self.state if id(p) not in kept]:
            del self.state[p]
            self._param_conf.pop(p, None)

    def _group_changed(self, group: dict, key: str) -> None:
        """A key of a group was set (ParamGroup.__setitem__): hyperparameters go to the
        device tensors; amsgrad adds or drops the max(v) state."""
        gindex = next((i for i, g in enumerate(self.param_groups) if g is group), None)
        if gindex is None:
            return
        if key in HYPER_KEYS:
            self._refresh_hyper(gindex)
        elif key in ("amsgrad", "params"):  # max(v) appears (zeros) or goes; parameters join or leave
            self._rebuild([gindex])
            self._drop_orphan_state()

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

    def _state_dtype(self, p: Tensor, conf: dict) -> torch.dtype:
        """The state format of ``p``: its current state's (a loaded 32-bit state stays 32-bit),
        or for fresh state the one its config asks for."""
        src = self.state.get(p, {})
        if "state1" in src:
            return src["state1"].dtype
        eight = conf["optim_bits"] == 8 and p.numel() >= conf["min_8bit_size"]
        return torch.uint8 if eight else torch.float32

    def _overrides_changed(self) -> None:
        """GlobalOptimManager's overrides changed: parameters that have not stepped take
        their new config (bitsandbytes reads overrides when it creates state, at the first
        step); a parameter that has stepped keeps its state, with a warning."""
        groups = set()
        for gi, group in enumerate(self.param_groups):
            for pi, p in enumerate(group["params"]):
                old = self._param_conf.get(p)
                new = self._config(gi, pi, p, refresh=True)
                if old is None or old == new or not self.state.get(p):  # no state yet: made in the new config
                    continue
                if int(self.state[p]["step"]) == 0:  # a host read, at configuration time only
                    self.state[p] = {}  # fresh state in the new format
                    groups.add(gi)
                else:
                    self._param_conf[p] = old
                    warnings.warn(
                        f"adamw8: param_groups[{gi}]['params'][{pi}] has stepped: its new config override is "
                        "ignored (overrides apply when state is created)",
                        UserWarning,
                        stacklevel=3,
                    )
        if groups:
            self._rebuild(sorted(groups))

    # ----------------------------------------------------------------- buckets
    @torch._dynamo.disable  # host-side bookkeeping: never traced, also from a step that joins state
    def _rebuild(self, groups=None) -> None:
        """The buckets of ``groups`` (all by default), their state re-packed into fresh flat
        buffers (buckets.py) from each parameter's current state (or zeros where it has none).
        Transiently holds the old and the new state of those groups."""
        groups = range(len(self.param_groups)) if groups is None else groups
        n = len(self.param_groups)  # a group removed by hand (_take_groups) takes its buckets with it
        kept = [b for b in self._buckets if b.gindex not in groups and b.gindex < n]
        self._frozen = [f for f in self._frozen if f[0] not in groups and f[0] < n]
        made = []
        for gi in groups:
            group = self.param_groups[gi]
            plan: dict = {}
            placed = set()
            for pi, p in enumerate(group["params"]):
                if id(p) in placed:  # listed twice (torch warns): one state, one update a step, no race
                    continue
                placed.add(id(p))
                if not p.requires_grad and p.grad is None and not self.state.get(p):  # frozen: no state yet
                    self.state.pop(p, None)
                    self._frozen.append((gi, pi, p))
                    continue
                conf = self._config(gi, pi, p)
                paged = (self.options.is_paged and paging.should_page(local(p))
                         and paging.pager_for(p.device) is not None)
                key = (p.device, p.dtype, self._state_dtype(p, conf), conf["block_wise"], conf["percentile_clipping"],
                       conf["hp"], is_sharded(p), paged)
                plan.setdefault(key, []).append((pi, p))
            for (dev, dtype, sdtype, block_wise, pct, hp, sharded, paged), items in plan.items():
                params = [p for _, p in items]
                qmaps = self._get_qmaps(dev) if sdtype == torch.uint8 else (None, None)
                pager = paging.pager_for(dev) if paged else None
                buffers, offsets, views = pack(params, [self.state.get(p, {}) for p in params], device=dev,
                                               state_dtype=sdtype, amsgrad=group["amsgrad"], block_wise=block_wise,
                                               percentile=pct, qmaps=qmaps, pager=pager)
                for p, st in zip(params, views):
                    self.state[p] = st
                made.append(Bucket(
                    gindex=gi, params=params, names=[f"param_groups[{gi}]['params'][{pi}]" for pi, _ in items],
                    shapes=[local(p).shape for p in params], dtype=dtype, device=dev, offsets=offsets,
                    buffers=buffers, qmaps=qmaps,
                    hyper=self._hyper.get((gi, hp, dev), self._hyper_values(gi, hp)),
                    block_wise=block_wise, percentile=pct, sharded=sharded, pager=pager,
                ))
        self._buckets = sorted(kept + made, key=lambda b: b.gindex)
        self._groups_seen = list(self.param_groups)

    # ------------------------------------------------------------------ paging
    def _paged(self) -> list:
        return [b for b in self._buckets if b.pager is not None]

    def paged_bytes(self) -> int:
        """Bytes of state in paged memory (0 for an optimizer that pages nothing)."""
        return sum(t.numel() * t.element_size() for b in self._paged() for t in b.paged_buffers())

    def page_out(self) -> None:
        """Move the paged state to host memory (a prefetch on the current stream), so its GPU
        memory can serve activations.  The next eager ``step()`` (or ``page_in()``) brings it
        back.  A no-op for an optimizer without paged state."""
        for b in self._paged():
            b.pager.prefetch(b.paged_buffers(), False)
        self._paged_out[0] = bool(self._paged())

    def page_in(self) -> None:
        """Move the paged state to its GPU (a prefetch on the current stream).  Call it before a
        compiled or CUDA-graph-captured step that follows a ``page_out()``."""
        for b in self._paged():
            b.pager.prefetch(b.paged_buffers(), True)
        self._paged_out[0] = False

    # -------------------------------------------------------------------- step
    def _join_frozen(self, eager: bool) -> None:
        """Frozen parameters that have a gradient now get their state (zeros), their groups'
        buckets re-packed: in an eager step.  A compiled step cannot make state and says so
        while tracing (without fullgraph, torch.compile then runs the step eagerly)."""
        joined = [(gi, pi) for gi, pi, p in self._frozen if p.grad is not None]
        if joined and not eager:
            gi, pi = joined[0]
            raise RuntimeError(
                f"param_groups[{gi}]['params'][{pi}] was frozen (requires_grad=False) when the optimizer was made "
                "and has a gradient now: its state is made by an eager step; call opt.step() once without "
                "torch.compile (or make the optimizer after unfreezing it)")
        if joined:
            self._rebuild(sorted({gi for gi, _ in joined}))

    @torch._dynamo.disable
    def _take_groups(self) -> None:
        """``opt.param_groups`` changed by hand (a group replaced by a dict, one appended or
        removed): as torch's optimizers read their groups at every step, the next eager step
        takes the list as it is, checked as add_param_group checks a group, and re-packs the
        state (a parameter that left every group loses its state).  A compiled step reads
        only the buckets, so it goes on with the groups of the last eager step."""
        groups = []
        for i, g in enumerate(self.param_groups):
            if not isinstance(g, ParamGroup) or g.__dict__.get("_owner") is None or g.__dict__["_owner"]() is not self:
                if not isinstance(g, dict) or "params" not in g:
                    raise TypeError(f"param_groups[{i}]: expected a dict with 'params', got {type(g).__name__}")
                g = {**self.defaults, **g}
                g["params"] = [g["params"]] if isinstance(g["params"], Tensor) else list(g["params"])
                try:
                    self._check_params(g["params"])
                    check_hyper(g["lr"], g["betas"], g["eps"], g["weight_decay"])
                    check_bool("amsgrad", g["amsgrad"])
                except (TypeError, ValueError) as e:
                    raise type(e)(f"param_groups[{i}]: {e}") from None
                warn_if_tensor_lr(g["lr"], stacklevel=4)
                g = ParamGroup({k: normalise(k, v) if k in HYPER_KEYS else v for k, v in g.items()}).attach(self)
            groups.append(g)
        self._check_disjoint([g["params"] for g in groups])
        self.param_groups[:] = groups
        self._drop_orphan_state()
        self._rebuild()
        for gi in range(len(groups)):
            self._refresh_hyper(gi)

    @torch.no_grad()
    def step(self, closure=None):
        """One AdamW step for every parameter with a gradient; returns the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        eager = not torch.compiler.is_compiling()
        seen = self._groups_seen  # compiled, Dynamo cannot read the groups (nor does the step)
        if eager and (len(self.param_groups) != len(seen) or any(g is not s for g, s in zip(self.param_groups, seen))):
            self._take_groups()
        if self._frozen:
            self._join_frozen(eager)
        # compiled, decided while tracing (Dynamo guards the shapes), and the fake kernel checks the grads
        live = [b.live(check_grads=eager) for b in self._buckets]
        if eager:
            # page the state back in after a page_out(); never inside a capture (paging.py)
            if self._paged_out[0] and not (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()):
                self.page_in()
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        k = self._tensors_per_call_eager if eager else self._tensors_per_call
        for b, (idx_all, grads_all) in zip(self._buckets, live):
            if not idx_all:
                continue
            dev = b.params[0].device
            gs = None if grad_scale is None else as_float32_scalar(grad_scale, dev)
            fi = None if found_inf is None else as_float32_scalar(found_inf, dev)
            for c in range(0, len(idx_all), k):
                idx, grads = idx_all[c : c + k], grads_all[c : c + k]
                params = [b.params[i] for i in idx]
                if b.sharded:  # DTensor parameters (FSDP2): the kernels update each rank's local shard
                    params, grads = [local(p) for p in params], [local(g) for g in grads]
                torch.ops.adamw8.fused_step_multi(*StepArgs(
                    params=params, grads=grads, **b.buffers,
                    qmap1=b.qmaps[0], qmap2=b.qmaps[1], hyper=b.hyper, block_wise=b.block_wise,
                    percentile=b.percentile, grad_scale=gs, found_inf=fi, layout=b.layout(idx),
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
    _EXTRA_STATE = ("options", "args", "_qmaps", "_param_conf", "_hp_overrides", "_stepped")  # not _paged_out

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
        self._buckets = []
        self._frozen = []
        self._paged_out = [False]  # the copy's state is new memory, resident
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
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p] = new_state.get(p, {})  # the checkpoint's tensors, copied in by _rebuild
        for group, values in zip(self.param_groups, group_values):
            for key, value in values.items():
                dict.__setitem__(group, key, normalise(key, value) if key in HYPER_KEYS else value)
        self._rebuild()
        for gi in range(len(self.param_groups)):
            self._refresh_hyper(gi)
        for hook in self._optimizer_load_state_dict_post_hooks.values():
            hook(self)
