"""Paged optimizer state: CUDA unified memory that the optimizer moves between GPU and host.

``PagedAdamW``, ``PagedAdamW8bit``, ``PagedAdamW32bit`` and ``is_paged=True`` keep the state of
every parameter of at least ``PAGE_MIN_NUMEL`` (100,000) elements in managed memory (smaller
ones stay ordinary, as in bitsandbytes).  The memory comes from an allocator-level op,
``torch.ops.adamw8._managed_empty`` (``cudaMallocManaged``): the tensors are real CUDA tensors
on the parameter's device, every kernel and ``torch.compile`` treat them like any other, and
the memory is returned to the driver when the last tensor using it dies.  An allocation that
asks for more than the device has free is refused: oversubscribed managed memory can stall the
card.

Paging: ``opt.page_out()`` prefetches the paged state to host memory on the current stream
(its device memory can then serve activations); ``opt.page_in()`` prefetches it back, and an
eager ``step()`` pages in first by itself after a page-out.  A compiled step (``torch.compile``)
and a CUDA graph capture do not prefetch (``cudaMemPrefetchAsync`` cannot be captured): call
``opt.page_in()`` before them, or the kernels fault the pages in on demand (same results,
slower).

On the CPU there is nothing to page: ``is_paged`` is a no-op that warns once, as in
bitsandbytes.  The ``Pager`` below is the seam the optimizer goes through; tests install a
stand-in for the CPU (``set_pager``) to check the optimizer's logic without a GPU.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

PAGE_MIN_NUMEL = 100_000


class Pager:
    """Allocates paged state and moves it.  ``device_type`` names the devices it serves."""

    device_type = "cuda"

    def empty(self, numel: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        raise NotImplementedError

    def prefetch(self, tensors: list[Tensor], to_device: bool) -> None:
        raise NotImplementedError

    def is_paged(self, t: Tensor) -> bool:
        raise NotImplementedError


class ManagedPager(Pager):
    """CUDA unified memory through the extension's ops (csrc/cuda/paging_cuda.cpp)."""

    device_type = "cuda"

    @staticmethod
    def available() -> bool:
        return hasattr(torch.ops.adamw8, "_managed_empty")

    def empty(self, numel, dtype, device):
        return torch.ops.adamw8._managed_empty([numel], dtype, device)

    def prefetch(self, tensors, to_device):
        if tensors:
            torch.ops.adamw8._prefetch(tensors, to_device)

    def is_paged(self, t):
        return t.is_cuda and torch.ops.adamw8._is_managed(t)


_pagers: dict[str, Pager] = {}
_warned: set = set()


def set_pager(pager: Pager | None, device_type: str | None = None) -> None:
    """Install ``pager`` for ``device_type`` (default: its own); None removes it."""
    if pager is not None and not isinstance(pager, Pager):
        raise TypeError(f"adamw8: expected an adamw8.paging.Pager or None, got {type(pager).__name__}")
    if device_type is not None and not isinstance(device_type, str):
        raise TypeError(f"adamw8: device_type must be a str such as 'cuda', got {type(device_type).__name__}")
    key = device_type or (pager.device_type if pager is not None else None)
    if key is None:
        raise ValueError("adamw8: set_pager(None) needs the device_type to clear")
    if pager is None:
        _pagers.pop(key, None)
    else:
        _pagers[key] = pager


def pager_for(device: torch.device | str) -> Pager | None:
    """The pager for ``device`` (a torch.device or its name), or None where paging is a no-op
    (with a one-time warning)."""
    device = torch.device(device)
    if device.type in _pagers:
        return _pagers[device.type]
    if device.type == "cuda":
        if ManagedPager.available():
            _pagers["cuda"] = ManagedPager()
            return _pagers["cuda"]
        _warn_once("cuda-nobuild", "adamw8: this build has no CUDA paging ops (the CUDA kernels were not built); "
                   "paged state stays in ordinary device memory")
        return None
    _warn_once(device.type, f"adamw8: paged state is a no-op on {device.type} (nothing to page); the state is "
               "ordinary memory")
    return None


def _warn_once(key: str, msg: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(msg, RuntimeWarning, stacklevel=4)


def should_page(p: Tensor) -> bool:
    """Whether a parameter's state is paged (given a paged optimizer and a pager for its device)."""
    return p.numel() >= PAGE_MIN_NUMEL
