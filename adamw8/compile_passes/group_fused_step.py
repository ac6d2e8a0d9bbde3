"""Inductor post-grad pass: group single-tensor ``fused_step`` calls into ``fused_step_multi`` calls.

A user who calls ``torch.ops.adamw8.fused_step`` in their own per-parameter
loop gets one op call (one kernel launch, ~6-10 µs of dispatch, docs/design.md) per
parameter.  In a compiled graph those calls appear as independent
``auto_functionalized_v2(adamw8.fused_step, ...)`` nodes.  This pass finds
calls that can share one launch — same device, param dtype and state format,
same optional states, the same hyper/qmap/AMP inputs and constants — and
replaces each such set by one ``auto_functionalized_v2(adamw8.fused_step_multi,
...)`` node, whose mutated bases Inductor then reinplaces as before.

Safety: calls are grouped only when no other node uses their results before
the last call of the group (so moving every call to that point keeps the
graph's order), and no tensor is mutated by two calls of a group.
"""

from __future__ import annotations

import logging
import operator
from collections import defaultdict

import torch
from torch._inductor.custom_graph_pass import CustomGraphPass, get_hash_for_files

from ..ops.schemas import STEP_ARGS

log = logging.getLogger(__name__)

AUTO_FUNC = torch.ops.higher_order.auto_functionalized_v2
MAX_PER_CALL = 32  # tensors per fused_step_multi call: see AdamWBase._tensors_per_call

# From the one argument record (ops/schemas.py): the single op's mutable arguments and
# their fused_step_multi lists, the tensor inputs a group must share, and the constants.
_MUTABLE = tuple((a.single, a.multi) for a in STEP_ARGS if a.kind in ("mutable", "mutable?"))
_SHARED = tuple(a.single for a in STEP_ARGS if a.kind in ("tensor", "tensor?"))
_CONST = tuple(a.single for a in STEP_ARGS if a.kind in ("bool", "int"))  # (layout: multi only, unused here)


def _is_single_step(node: torch.fx.Node) -> bool:
    return (
        node.op == "call_function"
        and node.target is AUTO_FUNC
        and node.args
        and node.args[0] is torch.ops.adamw8.fused_step.default
    )


def _bases(node: torch.fx.Node) -> dict:
    """Mutable argument name -> its base node (or None when the optional argument is absent)."""
    all_bases = node.kwargs["_all_bases"]
    out = {}
    for name, _ in _MUTABLE:
        idx = node.kwargs.get(f"_{name}_base_index")
        out[name] = None if idx is None else all_bases[idx]
    return out


def _key(node: torch.fx.Node):
    """Calls with equal keys can share one fused_step_multi launch."""
    kw = node.kwargs
    bases = _bases(node)
    pval = bases["param"].meta.get("val")
    sval = bases["state1"].meta.get("val")
    if pval is None or sval is None:
        return None
    return (
        tuple(id(kw.get(k)) for k in _SHARED),
        tuple(kw.get(k) for k in _CONST),
        tuple(bases[name] is None for name, _ in _MUTABLE),
        pval.device,
        pval.dtype,
        sval.dtype,
    )


def _can_group(nodes: list[torch.fx.Node], order: dict) -> bool:
    last = max(order[n] for n in nodes)
    seen_bases = set()
    for n in nodes:
        for b in _bases(n).values():
            if b is not None:
                if b in seen_bases:
                    return False
                seen_bases.add(b)
        for g in n.users:
            if g.target is not operator.getitem:  # not functionalization's output pattern: leave it
                return False
            for u in g.users:
                if order[u] <= last:
                    return False
    return True


def _replace(graph: torch.fx.Graph, nodes: list[torch.fx.Node], order: dict) -> None:
    first_kw = nodes[0].kwargs
    bases_of = [_bases(n) for n in nodes]
    kwargs = {k: first_kw[k] for k in _SHARED + _CONST}
    kwargs["grads"] = [n.kwargs["grad"] for n in nodes]
    kwargs["layout"] = []  # one state tensor per parameter
    all_bases: list[torch.fx.Node] = []
    where = {}  # (node, single name) -> index in all_bases
    for single, lst in _MUTABLE:
        present = [b[single] for b in bases_of if b[single] is not None]
        kwargs[f"_{lst}_length"] = len(present)
        for i, (n, b) in enumerate(zip(nodes, bases_of)):
            if b[single] is None:
                continue
            kwargs[f"_{lst}_{i}_base_index"] = len(all_bases)
            where[(n, single)] = len(all_bases)
            all_bases.append(b[single])
    kwargs["_all_bases"] = all_bases
    last = max(nodes, key=lambda n: order[n])
    with graph.inserting_after(last):
        new = graph.call_function(AUTO_FUNC, (torch.ops.adamw8.fused_step_multi.default,), kwargs)
    # output i + 1 of auto_functionalized_v2 is the updated _all_bases[i]
    outputs = []  # (old getitem, index in the new node's outputs)
    for n in nodes:
        name_of = {n.kwargs[f"_{s}_base_index"]: s for s, _ in _MUTABLE if n.kwargs.get(f"_{s}_base_index") is not None}
        for g in list(n.users):  # all getitems (_can_group checked)
            outputs.append((g, 1 + where[(n, name_of[g.args[1] - 1])]))
    vals = [None] + [b.meta.get("val") for b in all_bases]
    for g, i in outputs:
        vals[i] = g.meta.get("val", vals[i])
    new.meta["val"] = tuple(vals)
    cursor = new
    for g, i in outputs:
        with graph.inserting_after(cursor):
            ng = graph.call_function(operator.getitem, (new, i))
        ng.meta.update(g.meta)
        g.replace_all_uses_with(ng)
        graph.erase_node(g)
        cursor = ng
    for n in nodes:
        graph.erase_node(n)


class GroupFusedStep(CustomGraphPass):
    """The pass; ``stats`` counts what the last call found and made."""

    def __init__(self):
        self.stats = {"single_before": 0, "single_after": 0, "multi_created": 0}

    def __call__(self, graph: torch.fx.Graph) -> None:
        singles = [n for n in graph.nodes if _is_single_step(n)]
        self.stats = {"single_before": len(singles), "single_after": len(singles), "multi_created": 0}
        if len(singles) < 2:
            return
        order = {n: i for i, n in enumerate(graph.nodes)}
        groups = defaultdict(list)
        for n in singles:
            k = _key(n)
            if k is not None:
                groups[k].append(n)
        for nodes in groups.values():
            if len(nodes) < 2:
                continue
            if not _can_group(nodes, order):
                log.info("adamw8: %d fused_step calls left ungrouped: their results are used in between", len(nodes))
                continue
            # calls of at most MAX_PER_CALL tensors, as the optimizer makes (AdamWBase._tensors_per_call)
            for c in range(0, len(nodes), MAX_PER_CALL):
                chunk = nodes[c : c + MAX_PER_CALL]
                if len(chunk) < 2:
                    continue
                _replace(graph, chunk, order)
                self.stats["single_after"] -= len(chunk)
                self.stats["multi_created"] += 1
        graph.lint()

    def uuid(self):
        # editing this file invalidates Inductor's cache of graphs compiled with the pass
        return get_hash_for_files((__file__,))
