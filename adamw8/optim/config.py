"""Constructor arguments: validation, bnb's ``args`` object, per-parameter config.

Every check raises before the optimizer exists, with the argument's name, what
was expected and what was got (docs/design.md, "Validation").
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
from torch import Tensor

_FLOAT32_MAX = float(torch.finfo(torch.float32).max)

# Options that bnb reads from ``args`` (an object whose attributes override
# the keyword arguments) rather than from the parameter groups.
ARGS_KEYS = ("optim_bits", "min_8bit_size", "percentile_clipping", "block_wise", "is_paged")

# Hyperparameters a GlobalOptimManager override may change for one parameter.
HYPER_KEYS = ("lr", "betas", "eps", "weight_decay")


@dataclass(frozen=True)
class Options:
    """The optimizer-wide options of the seed API (after ``args`` is applied)."""

    optim_bits: int = 32
    min_8bit_size: int = 4096
    percentile_clipping: int = 100
    block_wise: bool = True
    is_paged: bool = False


def _is_real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def check_real(name: str, value, *, low: float = 0.0, high: float | None = None, high_open: bool = False):
    """A float hyperparameter or a one-element floating tensor, within [low, high] / [low, high)."""
    if isinstance(value, Tensor):
        if value.numel() != 1 or not value.is_floating_point():
            raise TypeError(
                f"{name}: expected a float or a one-element floating tensor, got a {value.dtype} tensor "
                f"of shape {tuple(value.shape)}"
            )
        if value.device.type == "meta":
            return
        v = float(value.detach().cpu())  # constructor-time only, never in a step
    elif _is_real(value):
        v = float(value)
    else:
        raise TypeError(f"{name}: expected a float or a 0-d tensor, got {type(value).__name__} ({value!r})")
    if math.isinf(v):
        raise ValueError(f"{name}: expected a finite value, got {v} (an infinite lr or weight decay makes every "
                         "parameter inf or NaN in one step)")
    if abs(v) > _FLOAT32_MAX:
        raise ValueError(f"{name}: expected a value float32 can hold (the kernels compute in float32), got {v}")
    bad = v != v or v < low or (high is not None and (v >= high if high_open else v > high))
    if bad:
        if high is None:
            raise ValueError(f"{name}: expected a value >= {low}, got {v}")
        raise ValueError(f"{name}: expected a value in [{low}, {high}{')' if high_open else ']'}, got {v}")


def check_betas(betas) -> None:
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise TypeError(f"betas: expected a tuple of two floats, got {type(betas).__name__} ({betas!r})")
    check_real("betas[0]", betas[0], high=1.0, high_open=True)
    check_real("betas[1]", betas[1], high=1.0, high_open=True)


def check_hyper(lr, betas, eps, weight_decay) -> None:
    check_real("lr", lr)
    check_betas(betas)
    check_real("eps", eps)
    check_real("weight_decay", weight_decay)


def check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__} ({value!r})")
    return value


def check_options(opts: Options) -> Options:
    if not _is_int(opts.optim_bits) or opts.optim_bits not in (8, 32):
        raise ValueError(f"optim_bits: expected 8 or 32, got {opts.optim_bits!r}")
    if not _is_int(opts.min_8bit_size) or opts.min_8bit_size < 0:
        raise ValueError(f"min_8bit_size: expected an int >= 0, got {opts.min_8bit_size!r}")
    pc = opts.percentile_clipping
    if not _is_int(pc) or not 1 <= pc <= 100:
        raise ValueError(f"percentile_clipping: expected an int in 1..100 (100 = off), got {pc!r}")
    check_bool("block_wise", opts.block_wise)
    check_bool("is_paged", opts.is_paged)
    return opts


def resolve_options(args, **kwargs) -> Options:
    """bnb semantics: attributes of ``args`` win over the keyword arguments."""
    values = dict(kwargs)
    if args is not None:
        for key in ARGS_KEYS:
            if hasattr(args, key):
                values[key] = getattr(args, key)
    return check_options(Options(**values))


def check_override(key: str, value) -> None:
    """Validate one GlobalOptimManager override (same rules as the constructor)."""
    if key in ("lr", "eps", "weight_decay"):
        check_real(key, value)
    elif key == "betas":
        check_betas(value)
    elif key in ("optim_bits", "min_8bit_size", "percentile_clipping", "block_wise"):
        check_options(Options(**{key: value}))
    else:
        raise ValueError(
            f"override key: expected one of {HYPER_KEYS + ARGS_KEYS[:-1]}, got {key!r}"
        )


def as_float32_scalar(value, device: torch.device) -> Tensor:
    """A per-step scalar as the 0-d float32 device tensor the ops read.

    A tensor already in that form is returned as is (no copy, so a scheduler's
    in-place update is seen and a CUDA graph replays with the new value).
    """
    if isinstance(value, Tensor):
        if value.dtype == torch.float32 and value.device == device and value.dim() == 0:
            return value
        return value.detach().reshape(()).to(device=device, dtype=torch.float32)
    return torch.full((), float(value), dtype=torch.float32, device=device)
