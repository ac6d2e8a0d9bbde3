"""Param groups whose hyperparameters reach the kernels without a sync, a guard or a recompile.

What users see: ``group["lr"]``, ``group["betas"]``, ``group["eps"]``,
``group["weight_decay"]`` are plain numbers, as in torch.optim and bitsandbytes; loggers,
``json.dumps`` and ``get_last_lr()`` get floats.

What the kernels read: one float32 device tensor per (group, override set, device),
``hyper = [lr, beta1, beta2, eps, weight_decay]``.

The mechanism (docs/design.md, "Compile"): a param group is a ``dict`` subclass whose
``__setitem__`` validates a hyperparameter and writes it into the group's device tensors
at once, with ``fill_`` (an asynchronous device write: no host sync, unlike a copy from
pageable memory).  Every writer goes through it: torch's LR schedulers assign floats
(``param_group["lr"] = value``; OneCycleLR with ``cycle_momentum`` assigns
``param_group["betas"]``), so do ReduceLROnPlateau, SequentialLR's children and a user
setting a value by hand; ``update``, ``setdefault`` and ``|=``, which dict runs in C without
``__setitem__``, are routed through it.  A group replaced in ``param_groups`` by a plain dict,
or one appended or deleted there, is taken in by the next eager step (base.py, _take_groups).
``step()`` never reads the group dicts, only the device tensors,
so torch.compile has no Python float to guard on (no recompile when a value changes), and
a step captured in a CUDA graph reads the tensor's new value on every replay.
"""

from __future__ import annotations

import warnings
import weakref

import torch
from torch import Tensor

from .config import HYPER_KEYS, check_betas, check_bool, check_real

def _as_number(value):
    return float(value.detach().reshape(()).cpu()) if isinstance(value, Tensor) else value


def warn_if_tensor_lr(value, stacklevel: int = 3) -> None:
    """A tensor lr is taken as its value (group["lr"] stays a number): say so where a user hands
    one over, since a later in-place change to that tensor (what code written for torch's
    capturable optimizers does) would otherwise be ignored without a word."""
    if isinstance(value, Tensor):
        warnings.warn("adamw8: lr was given as a tensor; the optimizer takes its value now, so a later in-place "
                      "change to that tensor (fill_, copy_) is not seen. Set group['lr'] instead, as LR schedulers "
                      "do: it reaches the kernels without a sync, and CUDA graphs replay the new value.",
                      UserWarning, stacklevel=stacklevel)


def normalise(key: str, value):
    """A hyperparameter as the group stores it: checked, tensors turned into numbers
    (construction or assignment time, never inside a step)."""
    if key == "betas":
        check_betas(value)
        return tuple(float(_as_number(b)) for b in value)
    check_real(key, value)
    return float(_as_number(value))


def hyper_values(group: dict, overrides: dict | None = None) -> list[float]:
    """[lr, beta1, beta2, eps, weight_decay] of a group, per-parameter overrides applied."""
    g = dict(group)
    g.update(overrides or {})
    b1, b2 = g["betas"]
    return [float(_as_number(g["lr"])), float(_as_number(b1)), float(_as_number(b2)), float(_as_number(g["eps"])),
            float(_as_number(g["weight_decay"]))]


_REQUIRED = (*HYPER_KEYS, "params", "amsgrad")


class ParamGroup(dict):
    """A torch.optim param group (a dict) that keeps its optimizer's device copies of the
    hyperparameters current (see the module docstring)."""

    def attach(self, optimizer) -> ParamGroup:
        self.__dict__["_owner"] = weakref.ref(optimizer)
        return self

    def __setitem__(self, key, value):
        owner = self.__dict__.get("_owner")
        opt = owner() if owner is not None else None
        if opt is not None and key in HYPER_KEYS:
            if key == "lr":
                warn_if_tensor_lr(value)
            value = normalise(key, value)  # a bad value fails here, before any step uses it
        elif opt is not None and key == "amsgrad":
            check_bool("amsgrad", value)
        elif opt is not None and key == "params":
            value = opt._checked_group_params(self, value)
        super().__setitem__(key, value)
        if opt is not None:
            opt._group_changed(self, key)

    # dict's other writers bypass __setitem__ in C: route them through it, so no value reaches
    # the group without reaching the kernels (and being checked)
    def update(self, *args, **kwargs):
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def setdefault(self, key, default=None):  # torch's LR schedulers: setdefault("initial_lr", ...)
        if key not in self:
            self[key] = default
        return self[key]

    def __ior__(self, other):
        self.update(other)
        return self

    def _removable(self, key):
        if key in _REQUIRED and self.__dict__.get("_owner") is not None:
            raise KeyError(f"param group: {key!r} cannot be removed (the optimizer's kernels read it); set a new "
                           "value instead")

    def __delitem__(self, key):
        self._removable(key)
        super().__delitem__(key)

    def pop(self, key, *default):
        if key in self:
            self._removable(key)
        return super().pop(key, *default)

    def popitem(self):
        raise KeyError("param group: popitem() would remove a key the optimizer's kernels read")

    def clear(self):
        raise KeyError("param group: clear() would remove the keys the optimizer's kernels read")

    def __reduce__(self):  # copies and pickles are plain groups; the optimizer re-attaches them
        return (ParamGroup, (dict(self),))


class HyperTensors:
    """The device tensors of one optimizer: key (group index, override index, device) ->
    float32 [5].  Values are written with fill_ only where they changed."""

    def __init__(self):
        self.tensors: dict[tuple, Tensor] = {}
        self.values: dict[tuple, list[float]] = {}

    def get(self, key: tuple, values: list[float]) -> Tensor:
        t = self.tensors.get(key)
        if t is None:
            t = torch.tensor(values, dtype=torch.float32, device=key[2])
            torch._dynamo.mark_static_address(t)  # a CUDA graph reads it in place
            self.tensors[key] = t
            self.values[key] = list(values)
        else:
            self.refresh(key, values)
        return t

    def refresh(self, key: tuple, values: list[float]) -> None:
        old = self.values[key]
        t = self.tensors[key]
        for i, (a, b) in enumerate(zip(old, values)):
            if a != b:
                t[i].fill_(b)
        self.values[key] = list(values)

    def keys_of_group(self, gindex: int):
        return [k for k in self.tensors if k[0] == gindex]
