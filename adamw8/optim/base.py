"""The AdamW optimizer family: param groups, state, one op call per bucket (SPEC §1, §3, §4).

``step()`` groups the parameters of each param group into buckets of one
(device, dtype, state format, option set) and makes one
``torch.ops.adamw8.fused_step_multi`` call per bucket: no Python loop calls a
kernel per parameter, and nothing synchronises with the host.

torch.compile: state is created in ``_init_group``, the hook Dynamo runs
eagerly (no graph break) and whose state tensors it marks static, so
``torch.compile(opt.step, fullgraph=True)`` captures the whole step and CUDA
graphs replay it.  Float learning rates are stored as 0-d float32 tensors on
the parameters' device, so LR schedulers (which ``fill_`` tensor lrs) never
cause a recompile.
"""

from __future__ import annotations

import types
import warnings
from collections import OrderedDict

import torch
from torch import Tensor

from ..ops import GNORM_HISTORY
from ..ops.reference import num_blocks
from . import state_dict as sd_io
from .config import HYPER_KEYS, Options, as_float32_scalar, check_bool, check_hyper, resolve_options
from .manager import GlobalOptimManager

_PARAM_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class AdamWBase(torch.optim.Optimizer):
    """Shared implementation of the six public classes (see ``adamw.py`` for their docs)."""

    # GradScaler hands us grad_scale/found_inf as device tensors (SPEC §1.1):
    # the kernels unscale and skip in-kernel, with no host sync.
    _step_supports_amp_scaling = True

    # Tensors per fused_step_multi call.  Compiled: compile time grows faster than
    # linearly with the size of one call (Inductor walks a call's whole argument list for
    # each of its ~6 outputs per tensor): on the 201-tensor set, calls of 32 compile ~15%
    # faster than one call of 201, and faster than calls of 8, 16 or 64
    # (benchmarks/RESULTS.md).  Eager: as many as one CUDA launch takes
    # (csrc/fused_step_cuda.h kMaxTensorsPerLaunch), the fewest launches.
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
        self._scalars: dict = {}  # (key, device) -> [float value, its device tensor] (_device_scalar)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)
        super().__init__(params, defaults)
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
        if isinstance(group["betas"], list):
            group["betas"] = tuple(group["betas"])
        devices = {p.device for p in group["params"]}
        dev = devices.pop() if len(devices) == 1 else torch.device("cpu")
        lr = group["lr"]
        if not isinstance(lr, Tensor):
            # A tensor lr: schedulers update it in place, so it never recompiles.
            group["lr"] = torch.tensor(float(lr), dtype=torch.float32, device=dev)
        elif lr.device != dev or lr.dtype != torch.float32 or lr.dim() != 0:
            # moved to the parameters' device once, not copied every step (a step stays capturable)
            group["lr"] = lr.detach().reshape(()).to(device=dev, dtype=torch.float32)

    # ------------------------------------------------------------- per param
    def _config(self, gindex: int, pindex: int, p: Tensor) -> dict:
        """Options and hyperparameters of one parameter (overrides applied), cached."""
        conf = self._param_conf.get(p)
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
            hyper = {k: v for k, v in over.items() if k in HYPER_KEYS}
            conf["hp"] = -1
            if hyper:
                if hyper not in self._hp_overrides:
                    self._hp_overrides.append(hyper)
                conf["hp"] = self._hp_overrides.index(hyper)
            self._param_conf[p] = conf
        return conf

    def _get_qmaps(self, device: torch.device) -> tuple[Tensor, Tensor]:
        if device not in self._qmaps:
            self._qmaps[device] = (
                torch.ops.adamw8.create_dynamic_map(True).to(device),
                torch.ops.adamw8.create_dynamic_map(False).to(device),
            )
        return self._qmaps[device]

    def _init_state(self, p: Tensor, conf: dict, amsgrad: bool) -> None:
        """Fresh state for ``p`` with bnb's key names (SPEC §1.2)."""
        dev, n = p.device, p.numel()
        eight = conf["optim_bits"] == 8 and n >= conf["min_8bit_size"]
        sdtype = torch.uint8 if eight else torch.float32
        state = self.state[p]
        state["step"] = torch.zeros((), dtype=torch.int64, device=dev)  # exact past 2^24 steps
        names = ("state1", "state2", "state3") if amsgrad else ("state1", "state2")
        for name in names:
            # contiguous, whatever the parameter's strides: kernels use flat order
            state[name] = torch.zeros(p.shape, dtype=sdtype, device=dev)
        if eight:
            state["qmap1"], state["qmap2"] = self._get_qmaps(dev)
            nb = num_blocks(n, conf["block_wise"])
            for name in ("absmax1", "absmax2", "absmax3") if amsgrad else ("absmax1", "absmax2"):
                state[name] = torch.zeros((nb,), dtype=torch.float32, device=dev)
        if conf["percentile_clipping"] < 100:
            state["gnorm_vec"] = torch.zeros((GNORM_HISTORY,), dtype=torch.float32, device=dev)

    def _check_grads(self) -> None:
        """Every gradient is checked before any parameter or state changes."""
        for gi, group in enumerate(self.param_groups):
            for pi, p in enumerate(group["params"]):
                g = p.grad
                if g is None:
                    continue
                where = f"param_groups[{gi}]['params'][{pi}]"
                if g.is_sparse or g.layout != torch.strided:
                    raise RuntimeError(f"{where}: expected a dense gradient, got layout {g.layout}")
                if g.dtype != p.dtype:
                    raise TypeError(f"{where}: expected a gradient of dtype {p.dtype}, got {g.dtype}")
                if g.shape != p.shape:
                    raise RuntimeError(f"{where}: expected a gradient of shape {tuple(p.shape)}, got {tuple(g.shape)}")
                if g.device != p.device:
                    raise RuntimeError(f"{where}: expected a gradient on {p.device}, got {g.device}")

    def _check_group_values(self) -> None:
        """Hyperparameters set by hand since the last step are checked, in every group, before
        any parameter changes (a bad value in the last group must not leave the first updated).
        Values in device tensors are left to the kernels: reading them here would synchronise."""

        def host(v, placeholder):
            return placeholder if isinstance(v, Tensor) and not v.is_cpu else v

        for gi, group in enumerate(self.param_groups):
            betas = group["betas"]
            if isinstance(betas, (tuple, list)) and len(betas) == 2:
                betas = tuple(host(b, 0.5) for b in betas)
            try:
                check_hyper(host(group["lr"], 0.0), betas, host(group["eps"], 0.0), host(group["weight_decay"], 0.0))
            except (TypeError, ValueError) as e:
                raise type(e)(f"param_groups[{gi}]: {e}") from None

    def _init_group(self, group, gindex, params, grads, state1, state2, state3, absmax1, absmax2, absmax3, steps,
                    gnorm_vecs, qmaps):
        """Create missing state and fill the lists with one group's tensors, bucket by bucket.

        Returns one tuple of ints/bools per bucket:
        (start, end, absmax_start, gnorm_start, qmap_index, block_wise, percentile, hp_index); the
        bucket's tensors are ``list[start:end]`` (absmax/gnorm lists from their own start, -1 if unused).
        """
        buckets: OrderedDict = OrderedDict()
        for pi, p in enumerate(group["params"]):
            if p.grad is None:
                continue
            conf = self._config(gindex, pi, p)
            if len(self.state[p]) == 0:
                self._init_state(p, conf, group["amsgrad"])
            st = self.state[p]
            key = (p.device, p.dtype, st["state1"].dtype, conf["block_wise"], conf["percentile_clipping"], conf["hp"])
            buckets.setdefault(key, []).append(p)
        out = []
        for (_dev, _dt, sdtype, block_wise, pct, hp), ps in buckets.items():
            start, a_start, g_start, q_idx = len(params), -1, -1, -1
            eight = sdtype == torch.uint8
            if eight:
                a_start, q_idx = len(absmax1), len(qmaps)
                qmaps.extend((self.state[ps[0]]["qmap1"], self.state[ps[0]]["qmap2"]))
            if pct < 100:
                g_start = len(gnorm_vecs)
            for p in ps:
                st = self.state[p]
                params.append(p)
                grads.append(p.grad)
                state1.append(st["state1"])
                state2.append(st["state2"])
                steps.append(st["step"])
                if group["amsgrad"]:
                    state3.append(st["state3"])
                if eight:
                    absmax1.append(st["absmax1"])
                    absmax2.append(st["absmax2"])
                    if group["amsgrad"]:
                        absmax3.append(st["absmax3"])
                if pct < 100:
                    gnorm_vecs.append(st["gnorm_vec"])
            # one call per chunk of at most _tensors_per_call tensors (see the attribute)
            k = self._tensors_per_call if torch.compiler.is_compiling() else self._tensors_per_call_eager
            for c in range(0, len(ps), k):
                m = min(k, len(ps) - c)
                out.append((start + c, start + c + m, a_start + c if eight else -1, g_start + c if pct < 100 else -1,
                            q_idx, block_wise, pct, hp))
        return out

    def _device_scalar(self, key, value, dev: torch.device) -> Tensor:
        """A per-step scalar (lr, beta1, beta2) as the 0-d float32 tensor on ``dev`` the ops read.

        A tensor is used as is (or moved, once per step, when it lives elsewhere).  Eager, a
        float gets one cached tensor per (key, device), refilled only when the value changes:
        no allocation per step, and a CUDA graph captured around ``step()`` reads the same
        tensor, so a new value set between replays is seen.  Traced by torch.compile, the
        tensor is made in the graph (Dynamo guards on the float's value there)."""
        if isinstance(value, Tensor) or torch.compiler.is_compiling():
            return as_float32_scalar(value, dev)
        cached = self._scalars.get((key, dev))
        if cached is None:
            cached = [float(value), torch.full((), float(value), dtype=torch.float32, device=dev)]
            self._scalars[(key, dev)] = cached
        elif cached[0] != float(value):
            cached[0] = float(value)
            cached[1].fill_(cached[0])
        return cached[1]

    # -------------------------------------------------------------------- step
    @torch.no_grad()
    def step(self, closure=None):
        """One AdamW step for every parameter with a gradient; returns the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._check_grads()
        if not torch.compiler.is_compiling():  # traced, a check would guard on every value
            self._check_group_values()
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        for gindex, group in enumerate(self.param_groups):
            params, grads, state1, state2, state3, absmax1, absmax2, absmax3, steps, gnorm_vecs, qmaps = (
                [], [], [], [], [], [], [], [], [], [], []
            )
            buckets = self._init_group(group, gindex, params, grads, state1, state2, state3, absmax1, absmax2,
                                       absmax3, steps, gnorm_vecs, qmaps)
            scalars = {}  # (hp_idx, device) -> the device scalars, shared by that bucket's calls
            for start, end, a_start, g_start, q_idx, block_wise, pct, hp_idx in buckets:
                n = end - start
                dev = params[start].device
                hp = group if hp_idx < 0 else {**group, **self._hp_overrides[hp_idx]}
                if (hp_idx, dev) not in scalars:
                    scalars[(hp_idx, dev)] = tuple(
                        self._device_scalar((gindex, hp_idx, name), x, dev)
                        for name, x in zip(("lr", "beta1", "beta2"), (hp["lr"], *hp["betas"]))
                    ) + tuple(None if x is None else as_float32_scalar(x, dev) for x in (grad_scale, found_inf))
                lr, beta1, beta2, gs, fi = scalars[(hp_idx, dev)]
                a_end = a_start + n
                torch.ops.adamw8.fused_step_multi(
                    params[start:end],
                    grads[start:end],
                    state1[start:end],
                    state2[start:end],
                    state3[start:end],
                    absmax1[a_start:a_end] if a_start >= 0 else [],
                    absmax2[a_start:a_end] if a_start >= 0 else [],
                    absmax3[a_start:a_end] if a_start >= 0 else [],
                    qmaps[q_idx] if q_idx >= 0 else None,
                    qmaps[q_idx + 1] if q_idx >= 0 else None,
                    steps[start:end],
                    gnorm_vecs[g_start:g_start + n] if g_start >= 0 else [],
                    lr,
                    beta1,
                    beta2,
                    float(hp["eps"]),
                    float(hp["weight_decay"]),
                    block_wise,
                    pct,
                    gs,
                    fi,
                )
        return loss

    # LR schedulers wrap ``opt.step`` in a function Dynamo refuses to trace,
    # which would break ``torch.compile(opt.step, fullgraph=True)`` once a
    # scheduler exists.  Marking step as already wrapped keeps it unwrapped.
    # The wrapper's only job, recording ``_opt_called`` for the scheduler's
    # order check, is answered from the state: it exists once a step has run.
    step._wrapped_by_lr_sched = True

    @property
    def _opt_called(self) -> bool:
        return len(self.state) > 0

    @_opt_called.setter
    def _opt_called(self, value) -> None:
        pass

    # ------------------------------------------------------------ copy, pickle
    # torch.optim.Optimizer pickles only defaults, state and param_groups; the
    # options, per-parameter configs and cached device tensors travel too, so a
    # deepcopy or an unpickled optimizer steps exactly like the original.
    _EXTRA_STATE = ("options", "args", "_qmaps", "_param_conf", "_hp_overrides", "_scalars")

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state.update({k: self.__dict__[k] for k in self._EXTRA_STATE})
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.mng = GlobalOptimManager.get_instance()  # a process-wide singleton, not pickled

    # -------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        """torch's layout with bnb's per-parameter keys; ``step`` as an int and lr as a float (bnb-loadable).
        Keys that state-dict post-hooks add are kept."""
        return sd_io.export_state_dict(super().state_dict())

    def load_state_dict(self, state_dict: dict) -> None:
        """Load an adamw8 or bitsandbytes (>= 0.44; flat or nested) state dict.

        Everything is checked before anything changes; a mismatch in group or
        parameter count, shape, dtype or block count raises ``ValueError``.
        Loaded tensors are copied (the optimizer never aliases the dict's tensors).
        """
        for hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = hook(self, state_dict)
            if result is not None:
                state_dict = result
        new_state, group_values = sd_io.import_state_dict(self, state_dict)
        self.state.clear()
        for p, st in new_state.items():
            self.state[p] = st
        for group, values in zip(self.param_groups, group_values):
            for key, value in values.items():
                if key == "lr" and isinstance(group["lr"], Tensor) and not isinstance(value, Tensor):
                    group["lr"].fill_(float(value))  # keep the tensor the scheduler and graphs hold
                else:
                    group[key] = value
        for hook in self._optimizer_load_state_dict_post_hooks.values():
            hook(self)
