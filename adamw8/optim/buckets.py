"""Buckets: the parameters one op call updates together, and their state in flat buffers.

A bucket holds the parameters of one param group with one (device, dtype, state format,
amsgrad, block_wise, percentile, override set).  Its state lives in one flat 1-D buffer per
kind (state1, state2, state3, absmax1..3, steps, gnorm_vecs); every parameter owns a region,
starting at a multiple of 256 elements (so 8-bit blocks and 128-bit accesses line up), and
``optimizer.state[p]`` holds views of its regions under bitsandbytes' key names.  The op
receives the flat buffers and a layout (ops/schemas.py): a compiled step has a handful of
state inputs per bucket instead of six per parameter, which is what its compile time is
proportional to (benchmarks/RESULTS.md).

Sharded parameters (DTensor, e.g. FSDP2's ``fully_shard``; docs/design.md, "Sharded
parameters"): the kernels update each rank's local shard; 8-bit blocks are blocks of the
local shard.  ``state[p]`` holds DTensors: state1..3 with the parameter's mesh and
placements; absmax and the clipping history as [shards, n] tables sharded on dim 0 along
the same mesh dims (one row per shard, padded to the largest shard's length), which
torch.distributed.checkpoint saves and reloads exactly at the same sharding, and refuses,
by their shape, anywhere else (a shard's 8-bit blocks cannot be re-blocked for another
sharding without dequantizing it); ``step`` is a plain tensor, equal on every rank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..ops import BLOCK_SIZE, GNORM_HISTORY
from ..ops.reference import num_blocks

try:  # torch built without distributed support has no DTensor
    from torch.distributed.tensor import DTensor, Shard
except ImportError:  # pragma: no cover
    DTensor, Shard = None, None

STATE_KEYS = ("state1", "state2", "state3")
ABSMAX_KEYS = ("absmax1", "absmax2", "absmax3")


def _round_up(n: int) -> int:
    return -(-n // BLOCK_SIZE) * BLOCK_SIZE


def is_sharded(t) -> bool:
    return DTensor is not None and isinstance(t, DTensor)


def local(t):
    """The tensor the kernels update: a DTensor's local shard, else the tensor itself."""
    return t._local_tensor if is_sharded(t) else t


def _max_local_numel(p) -> int:
    """The largest local shard of a DTensor over its mesh (torch.chunk's sizes)."""
    shape = list(p.shape)
    for mesh_dim, pl in enumerate(p.placements):
        if Shard is not None and isinstance(pl, Shard):
            shape[pl.dim] = -(-shape[pl.dim] // p.device_mesh.size(mesh_dim))
    return math.prod(shape)


def _sharded_mesh_size(p) -> int:
    return math.prod(p.device_mesh.size(d) for d, pl in enumerate(p.placements) if isinstance(pl, Shard))


def absmax_shape(p, block_wise: bool) -> tuple:
    """The (global) shape of one absmax state of ``p``: [blocks], or for a DTensor
    [shards, blocks of the largest shard]."""
    if not is_sharded(p):
        return (num_blocks(p.numel(), block_wise),)
    return (_sharded_mesh_size(p), num_blocks(_max_local_numel(p), block_wise))


def history_shape(p) -> tuple:
    return (_sharded_mesh_size(p), GNORM_HISTORY) if is_sharded(p) else (GNORM_HISTORY,)


@dataclass
class Bucket:
    gindex: int
    params: list = field(default_factory=list)  # the parameters (DTensors under FSDP2): grads live on them
    names: list = field(default_factory=list)  # "param_groups[i]['params'][j]" per parameter, for messages
    shapes: list = field(default_factory=list)  # each parameter's (local) shape when its state was made
    dtype: torch.dtype | None = None  # the parameters' dtype and device when their state was made
    device: torch.device | None = None
    offsets: list = field(default_factory=list)  # element offset of each parameter's region
    buffers: dict = field(default_factory=dict)  # op list name -> [flat buffer] or []
    qmaps: tuple = (None, None)
    hyper: Tensor | None = None
    block_wise: bool = True
    percentile: int = 100
    sharded: bool = False  # DTensor parameters: the op gets their local shards
    pager: object = None  # paging.Pager: state1..3 live in paged (managed) memory

    def paged_buffers(self) -> list[Tensor]:
        """The paged flat buffers (state1..3), empty for an ordinary bucket."""
        if self.pager is None:
            return []
        return [b for k in STATE_KEYS for b in self.buffers.get(k, [])]

    def live(self, check_grads: bool = True) -> tuple[list[int], list[Tensor]]:
        """The parameters the step updates, those with a gradient: their indices and gradients.
        Checked before any parameter or state changes: each parameter still has the dtype,
        device and (local) shape its state was made for (a parameter replaced in place,
        ``p.data = ...``, would otherwise be stepped against a region of the flat buffers sized
        for the old one, into its neighbour's state), and, with ``check_grads``, each gradient
        fits its parameter."""
        dtype, device, sharded, strided = self.dtype, self.device, self.sharded, torch.strided
        idx, grads = [], []
        for i, (where, p, shape) in enumerate(zip(self.names, self.params, self.shapes)):
            if (p._local_tensor if sharded else p).shape != shape or p.dtype != dtype or p.device != device:
                raise RuntimeError(
                    f"{where}: the parameter is now {p.dtype} {tuple(local(p).shape)} on {p.device}, but its "
                    f"optimizer state was made for {dtype} {tuple(shape)} on {device}; make the optimizer after "
                    "changing parameters (load_state_dict carries state over)")
            g = p.grad
            if g is None:
                continue
            if check_grads:
                if g.layout is not strided:
                    raise RuntimeError(f"{where}: expected a dense gradient, got layout {g.layout}")
                if g.dtype != dtype:
                    raise TypeError(f"{where}: expected a gradient of dtype {dtype}, got {g.dtype}")
                if g.shape != (shape if not sharded else p.shape):
                    raise RuntimeError(f"{where}: expected a gradient of shape {tuple(p.shape)}, got {tuple(g.shape)}")
                if g.device != device:
                    raise RuntimeError(f"{where}: expected a gradient on {device}, got {g.device}")
            idx.append(i)
            grads.append(g)
        return idx, grads

    def layout(self, idx: list[int]) -> list[int]:
        """The op's layout for the parameters ``idx`` of this bucket."""
        return [v for i in idx for v in (i, self.offsets[i])]


def _sharded_like(p, view: Tensor, shape: tuple) -> Tensor:
    """A per-rank 1-D state (absmax, history) as one row of a [shards, n] DTensor sharded on
    dim 0 along ``p``'s sharded mesh dims (replicated along the others)."""
    placements = [Shard(0) if isinstance(pl, Shard) else pl for pl in p.placements]
    return DTensor.from_local(view.view(1, shape[1]), p.device_mesh, placements, run_check=False, shape=shape,
                              stride=(shape[1], 1))


def pack(params: list, sources: list[dict], *, device, state_dtype, amsgrad: bool, block_wise: bool,
         percentile: int, qmaps, pager=None) -> tuple[dict, list[int], list[dict]]:
    """Flat buffers for one bucket, filled from each parameter's ``sources`` (its current state
    tensors, any device, DTensors or not, or missing: zeros).  With a ``pager`` (paging.py) the
    state1..3 buffers are paged memory.  Returns (buffers by op list name, offsets, the
    per-parameter state dicts of views)."""
    eight = state_dtype == torch.uint8
    n = len(params)
    locs = [local(p) for p in params]
    # a DTensor's region holds the largest rank's blocks, so every rank's absmax part is equal
    blocks = [num_blocks(_max_local_numel(p), True) if is_sharded(p) else num_blocks(q.numel(), True)
              for p, q in zip(params, locs)]
    offsets, total = [], 0
    for b in blocks:
        offsets.append(total)
        total += b * BLOCK_SIZE
    nb_total = total // BLOCK_SIZE if block_wise else n

    def zeros(count, dtype, paged=False):
        t = pager.empty(count, dtype, torch.device(device)).zero_() if paged else torch.zeros(count, dtype=dtype,
                                                                                              device=device)
        torch._dynamo.mark_static_address(t)  # CUDA graphs read state in place
        return t

    bufs = {k: zeros(total, state_dtype, pager is not None) for k in (STATE_KEYS if amsgrad else STATE_KEYS[:2])}
    if eight:
        bufs.update({k: zeros(nb_total, torch.float32) for k in (ABSMAX_KEYS if amsgrad else ABSMAX_KEYS[:2])})
    bufs["step"] = zeros(n + 1, torch.int64)  # one count per parameter, then the kernels' counter
    if percentile < 100:
        bufs["gnorm_vec"] = zeros(GNORM_HISTORY * n, torch.float32)
    views = []
    for slot, (p, q, off, nblk, src) in enumerate(zip(params, locs, offsets, blocks, sources)):
        sharded = is_sharded(p)
        nb = (nblk if block_wise else 1) if sharded else num_blocks(q.numel(), block_wise)
        boff = off // BLOCK_SIZE if block_wise else slot
        st = {}
        for key, buf in bufs.items():
            if key in STATE_KEYS:
                v = buf.narrow(0, off, q.numel()).view(q.shape)
            elif key in ABSMAX_KEYS:
                v = buf.narrow(0, boff, nb)
            elif key == "step":
                v = buf.narrow(0, slot, 1).view(())
            else:
                v = buf.narrow(0, GNORM_HISTORY * slot, GNORM_HISTORY)
            if key in src:
                s = local(src[key]).detach()
                if s.numel() != v.numel():
                    raise ValueError(
                        f"{key}: expected {v.numel()} local values, got {s.numel()}: the state was saved with a "
                        "different sharding (another world size?); 8-bit state cannot be re-blocked"
                    )
                v.copy_(s.reshape(v.shape))
            if sharded and key in STATE_KEYS:
                v = DTensor.from_local(v, p.device_mesh, p.placements, run_check=False, shape=p.shape,
                                       stride=p.stride())
            elif sharded and key in ABSMAX_KEYS:
                v = _sharded_like(p, v, absmax_shape(p, block_wise))
            elif sharded and key == "gnorm_vec":
                v = _sharded_like(p, v, history_shape(p))
            st[key] = v
        if eight:
            st["qmap1"], st["qmap2"] = qmaps
        views.append(st)
    names = {"step": "steps", "gnorm_vec": "gnorm_vecs"}
    op_bufs = {names.get(k, k): [v] for k, v in bufs.items()}
    for k in STATE_KEYS + ABSMAX_KEYS + ("gnorm_vecs",):
        op_bufs.setdefault(k, [])
    return op_bufs, offsets, views
