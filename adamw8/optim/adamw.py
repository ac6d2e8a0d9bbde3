"""The six public optimizers, with the seed's exact signatures (docs/design.md, "Validation").

All of them share ``AdamWBase``; the classes only fix ``optim_bits`` and
``is_paged`` the way bitsandbytes' classes do.  Unlike bitsandbytes, every
argument is honoured: ``amsgrad`` works in all variants, ``percentile_clipping``
and ``block_wise`` are implemented, and weight decay is applied before the Adam
update (torch.optim.AdamW's order, docs/design.md).
"""

from __future__ import annotations

import warnings

from .base import AdamWBase

_DOC = """{title}

    Args:
        params: iterable of parameters (fp32, bf16 or fp16) or of param-group dicts.
        lr (float or 0-d tensor, default 1e-3): learning rate; a float is stored as a
            0-d float32 tensor on the parameters' device so schedulers never recompile.
        betas (tuple of 2 floats or 0-d tensors, default (0.9, 0.999)).
        eps (float, default 1e-8).
        weight_decay (float, default 1e-2): decoupled, applied before the Adam update.
        amsgrad (bool, default False): keep max(v) as ``state3`` (same format as v).
        optim_bits (int, default 32): 8 or 32 bits of state{bits_note}.
        args (object, optional): attributes ``optim_bits``, ``min_8bit_size``,
            ``percentile_clipping``, ``block_wise``, ``is_paged`` override the keywords.
        min_8bit_size (int, default 4096): smaller tensors keep 32-bit state.
        percentile_clipping (int, default 100): clip each gradient to this percentile of its
            last 100 norms (100 = off), on the device.
        block_wise (bool, default True): one absmax per 256 elements; False: one per tensor.
        is_paged (bool, default False): paged state: CUDA unified memory for parameters of 100,000 elements
            or more, moved with ``page_out()`` / ``page_in()`` (adamw8.paging; a no-op on CPU).{paged_note}

    8-bit state: a non-finite gradient element resets that element's m and v to 0 and
    leaves its parameter unchanged (bitsandbytes' behaviour); use AMP's GradScaler to
    skip whole steps instead.
"""


class AdamW(AdamWBase):
    __doc__ = _DOC.format(title="AdamW with 32-bit or 8-bit state (``optim_bits``).", bits_note="",
                          paged_note="")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False,
                 optim_bits=32, args=None, min_8bit_size=4096, percentile_clipping=100, block_wise=True,
                 is_paged=False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, optim_bits, args, min_8bit_size,
                         percentile_clipping, block_wise, is_paged)


class AdamW8bit(AdamWBase):
    __doc__ = _DOC.format(title="AdamW with 8-bit blockwise state (about 2 bytes per parameter).",
                          bits_note="; fixed to 8 by this class", paged_note="")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False,
                 optim_bits=32, args=None, min_8bit_size=4096, percentile_clipping=100, block_wise=True,
                 is_paged=False):
        _check_fixed_bits(optim_bits, 8)
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, 8, _fix(args, optim_bits=8),
                         min_8bit_size, percentile_clipping, block_wise, is_paged)


class AdamW32bit(AdamWBase):
    __doc__ = _DOC.format(title="AdamW with 32-bit state.", bits_note="; fixed to 32 by this class",
                          paged_note="")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False,
                 optim_bits=32, args=None, min_8bit_size=4096, percentile_clipping=100, block_wise=True,
                 is_paged=False):
        _check_fixed_bits(optim_bits, 32)
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, 32, _fix(args, optim_bits=32),
                         min_8bit_size, percentile_clipping, block_wise, is_paged)


class PagedAdamW(AdamWBase):
    __doc__ = _DOC.format(title="Paged AdamW; ``optim_bits`` picks 8 or 32-bit state.", bits_note="",
                          paged_note=" Always True here.")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False,
                 optim_bits=32, args=None, min_8bit_size=4096, percentile_clipping=100, block_wise=True):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, optim_bits, _fix(args, is_paged=True),
                         min_8bit_size, percentile_clipping, block_wise, True)


class PagedAdamW8bit(AdamWBase):
    __doc__ = _DOC.format(title="Paged AdamW with 8-bit blockwise state.", bits_note="; fixed to 8 by this class",
                          paged_note=" Always True here.")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False,
                 optim_bits=32, args=None, min_8bit_size=4096, percentile_clipping=100, block_wise=True):
        _check_fixed_bits(optim_bits, 8)
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, 8,
                         _fix(args, optim_bits=8, is_paged=True), min_8bit_size, percentile_clipping,
                         block_wise, True)


class PagedAdamW32bit(AdamWBase):
    __doc__ = _DOC.format(title="Paged AdamW with 32-bit state.", bits_note="; fixed to 32 by this class",
                          paged_note=" Always True here.")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False,
                 optim_bits=32, args=None, min_8bit_size=4096, percentile_clipping=100, block_wise=True):
        _check_fixed_bits(optim_bits, 32)
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, 32,
                         _fix(args, optim_bits=32, is_paged=True), min_8bit_size, percentile_clipping,
                         block_wise, True)


class _Fixed:
    """``args`` with some attributes pinned by the class (the rest read through).

    An ``args`` whose own value contradicts a pinned one is warned about, not silently
    ignored: ``AdamW8bit(args=a)`` with ``a.optim_bits == 32`` keeps 8-bit state."""

    def __init__(self, args, fixed: dict):
        self._args, self._fixed = args, fixed
        for name, value in fixed.items():
            given = getattr(args, name, value) if args is not None else value
            if given != value:
                warnings.warn(
                    f"adamw8: args.{name}={given!r} is ignored: this optimizer class fixes {name}={value!r}",
                    UserWarning,
                    stacklevel=4,
                )

    def __getattr__(self, name):
        if name in self._fixed:
            return self._fixed[name]
        if self._args is None:
            raise AttributeError(name)
        return getattr(self._args, name)


def _fix(args, **fixed):
    return _Fixed(args, fixed)


def _check_fixed_bits(optim_bits, fixed: int) -> None:
    """The 8bit/32bit classes take ``optim_bits`` for bitsandbytes' signature and keep their
    own; a value that is not a valid choice at all is an error, not ignored."""
    if isinstance(optim_bits, bool) or optim_bits not in (8, 32):
        raise ValueError(f"optim_bits: expected 8 or 32 (this class uses {fixed}), got {optim_bits!r}")
