"""GlobalOptimManager: per-parameter config overrides, with bitsandbytes' API and merge order.

Typical use keeps an embedding's state in 32 bits inside an 8-bit optimizer::

    mng = adamw8.GlobalOptimManager.get_instance()
    mng.register_parameters(model.parameters())      # optional (bnb's index mapping)
    mng.override_config(model.emb.weight, "optim_bits", 32)
    opt = adamw8.AdamW8bit(model.parameters())

Merge order for a parameter (later wins, as bnb's ``get_config``): the
optimizer's options and the group's hyperparameters, then an override
registered by (group index, parameter index) through ``register_parameters``,
then one registered for the parameter object (``override_config``), then a
module override (``register_module_override``; bnb copies it over the others
at the first step).  Overrides are read when a parameter's state is created: at
construction, and again for parameters that have not stepped yet when an override is
registered later (bnb's order of calls: optimizer first, then ``override_config``).

Unlike bnb, the registry holds nothing alive: an override of a parameter is forgotten when the
parameter dies (bnb keys it by ``id(p)`` for good, so a later tensor at the same address
inherited it), and a module override holds its module weakly (bnb's list kept every such
module, and its weights, for the life of the process: one embedding per model a notebook or a
sweep made).
"""

from __future__ import annotations

import weakref

import torch

from .config import check_override


class GlobalOptimManager:
    """Process-wide registry of per-parameter optimizer config (a singleton, as in bnb)."""

    _instance: GlobalOptimManager | None = None

    def __init__(self):
        raise RuntimeError("GlobalOptimManager is a singleton: call GlobalOptimManager.get_instance()")

    def initialize(self) -> None:
        """Forget every override."""
        for fin in getattr(self, "_pid_finalizers", {}).values():
            fin.detach()
        self.pid2config: dict[int, dict] = {}
        self._pid_finalizers: dict[int, weakref.finalize] = {}  # forget an override when its parameter dies
        self.index2config: dict[tuple[int, int], dict] = {}
        self._module_overrides: list[tuple[weakref.ref, str, dict]] = []
        self.uses_config_override = False
        if not hasattr(self, "_optimizers"):
            self._optimizers = weakref.WeakSet()
        self._changed()

    def _watch(self, optimizer) -> None:
        """Optimizers to tell when overrides change (they re-create unstepped state)."""
        self._optimizers.add(optimizer)

    def _changed(self) -> None:
        for opt in list(self._optimizers):
            opt._overrides_changed()

    @property
    def module_weight_config_triple(self) -> list[tuple[torch.nn.Module, str, dict]]:
        """bnb's list of module overrides, ``(module, param_name, config)``: those whose module is
        alive (a copy; register_module_override adds to it)."""
        return [(m, name, config) for ref, name, config in self._module_overrides if (m := ref()) is not None]

    def _forget_parameter(self, pid: int) -> None:
        self.pid2config.pop(pid, None)
        self._pid_finalizers.pop(pid, None)

    @classmethod
    def get_instance(cls) -> GlobalOptimManager:
        if cls._instance is None:
            cls._instance = cls.__new__(cls)
            cls._instance.initialize()
        return cls._instance

    def register_parameters(self, params) -> None:
        """Map the overrides of already-overridden parameters to their (group, index) positions."""
        groups = list(params)
        if not groups:
            return
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for gi, group in enumerate(groups):
            for pi, p in enumerate(group["params"]):
                if id(p) in self.pid2config:
                    self.index2config[(gi, pi)] = self.pid2config[id(p)]
        self._changed()

    def override_config(self, parameters, key: str | None = None, value=None, key_value_dict: dict | None = None):
        """Override config keys (``optim_bits``, ``lr``, ``betas``, ...) for one parameter or a list of them."""
        if isinstance(parameters, torch.Tensor):
            parameters = [parameters]
        try:
            parameters = list(parameters)
        except TypeError:
            raise TypeError(f"override_config: expected a parameter or an iterable of them, got "
                            f"{type(parameters).__name__}") from None
        for p in parameters:
            if not isinstance(p, torch.Tensor):
                raise TypeError(f"override_config: expected tensors (parameters), got {type(p).__name__}")
        if key is not None:
            if key_value_dict is not None:
                raise ValueError("override_config: pass either key/value or key_value_dict, not both")
            key_value_dict = {key: value}
        if not isinstance(key_value_dict, dict) or not key_value_dict:
            raise ValueError(f"override_config: expected key and value, or a non-empty dict, got {key_value_dict!r}")
        for k, v in key_value_dict.items():
            check_override(k, v)  # a bad override fails here, not in a later step
        self.uses_config_override = True
        for p in parameters:
            self.pid2config.setdefault(id(p), {}).update(key_value_dict)
            if id(p) not in self._pid_finalizers:
                self._pid_finalizers[id(p)] = weakref.finalize(p, self._forget_parameter, id(p))
        self._changed()

    def register_module_override(self, module: torch.nn.Module, param_name: str, config: dict) -> None:
        """Override config for ``getattr(module, param_name)``, resolved when the optimizer first steps."""
        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"register_module_override: expected an nn.Module, got {type(module).__name__}")
        if not isinstance(getattr(module, param_name, None), torch.Tensor):
            raise ValueError(f"register_module_override: {type(module).__name__} has no tensor {param_name!r}")
        if not isinstance(config, dict):
            raise TypeError(f"register_module_override: expected a dict config, got {type(config).__name__}")
        for k, v in config.items():
            check_override(k, v)
        self.uses_config_override = True
        self._module_overrides = [o for o in self._module_overrides if o[0]() is not None]  # drop the dead
        self._module_overrides.append((weakref.ref(module), param_name, config))
        self._changed()

    def overrides_for(self, gindex: int, pindex: int, p: torch.Tensor) -> dict:
        """The merged overrides of one parameter (empty when it has none)."""
        merged: dict = dict(self.index2config.get((gindex, pindex), {}))
        merged.update(self.pid2config.get(id(p), {}))
        for ref, name, config in self._module_overrides:
            module = ref()
            if module is not None and getattr(module, name, None) is p:
                merged.update(config)
        return merged
