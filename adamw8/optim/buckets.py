"""Buckets: the parameters one op call updates together, and their state in flat buffers.

A bucket holds the parameters of one param group with one (device, dtype, state format,
amsgrad, block_wise, percentile, override set).  Its state lives in one flat 1-D buffer per
kind (state1, state2, state3, absmax1..3, steps, gnorm_vecs); every parameter owns a region,
starting at a multiple of 256 elements (so 8-bit blocks and 128-bit accesses line up), and
``optimizer.state[p]`` holds views of its regions under bitsandbytes' key names.  The op
receives the flat buffers and a layout (ops/schemas.py): a compiled step has a handful of
state inputs per bucket instead of six per parameter, which is what its compile time is
proportional to (benchmarks/RESULTS.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..ops import BLOCK_SIZE, GNORM_HISTORY
from ..ops.reference import num_blocks

STATE_KEYS = ("state1", "state2", "state3")
ABSMAX_KEYS = ("absmax1", "absmax2", "absmax3")


def _round_up(n: int) -> int:
    return -(-n // BLOCK_SIZE) * BLOCK_SIZE


@dataclass
class Bucket:
    gindex: int
    params: list = field(default_factory=list)
    names: list = field(default_factory=list)  # "param_groups[i]['params'][j]" per parameter, for messages
    offsets: list = field(default_factory=list)  # element offset of each parameter's region
    buffers: dict = field(default_factory=dict)  # op list name -> [flat buffer] or []
    qmaps: tuple = (None, None)
    hyper: Tensor | None = None
    block_wise: bool = True
    percentile: int = 100

    def layout(self, idx: list[int]) -> list[int]:
        """The op's layout for the parameters ``idx`` of this bucket."""
        return [v for i in idx for v in (i, self.offsets[i])]


def pack(params: list, sources: list[dict], *, device, state_dtype, amsgrad: bool, block_wise: bool,
         percentile: int, qmaps) -> tuple[dict, list[int], list[dict]]:
    """Flat buffers for one bucket, filled from each parameter's ``sources`` (its current state
    tensors, any device, or missing: zeros).  Returns (buffers by op list name, offsets, the
    per-parameter state dicts of views)."""
    eight = state_dtype == torch.uint8
    offsets, total = [], 0
    for p in params:
        offsets.append(total)
        total += _round_up(p.numel())
    n = len(params)
    nb_total = total // BLOCK_SIZE if block_wise else n

    def zeros(count, dtype):
        t = torch.zeros(count, dtype=dtype, device=device)
        torch._dynamo.mark_static_address(t)  # CUDA graphs read state in place
        return t

    bufs = {k: zeros(total, state_dtype) for k in (STATE_KEYS if amsgrad else STATE_KEYS[:2])}
    if eight:
        bufs.update({k: zeros(nb_total, torch.float32) for k in (ABSMAX_KEYS if amsgrad else ABSMAX_KEYS[:2])})
    bufs["step"] = zeros(n + 1, torch.int64)  # one count per parameter, then the kernels' counter
    if percentile < 100:
        bufs["gnorm_vec"] = zeros(GNORM_HISTORY * n, torch.float32)
    views = []
    for slot, (p, off, src) in enumerate(zip(params, offsets, sources)):
        k = p.numel()
        nb = num_blocks(k, block_wise)
        boff = off // BLOCK_SIZE if block_wise else slot
        st = {}
        for key, buf in bufs.items():
            if key in STATE_KEYS:
                st[key] = buf.narrow(0, off, k).view(p.shape)
            elif key in ABSMAX_KEYS:
                st[key] = buf.narrow(0, boff, nb)
            elif key == "step":
                st[key] = buf.narrow(0, slot, 1).view(())
            else:
                st[key] = buf.narrow(0, GNORM_HISTORY * slot, GNORM_HISTORY)
            if key in src:
                st[key].copy_(src[key].detach().reshape(st[key].shape))
        if eight:
            st["qmap1"], st["qmap2"] = qmaps
        views.append(st)
    names = {"step": "steps", "gnorm_vec": "gnorm_vecs"}
    op_bufs = {names.get(k, k): [v] for k, v in bufs.items()}
    for k in STATE_KEYS + ABSMAX_KEYS + ("gnorm_vecs",):
        op_bufs.setdefault(k, [])
    return op_bufs, offsets, views
