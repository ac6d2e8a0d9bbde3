"""Inductor/FX passes that make compiled adamw8 steps fast (docs/design.md, "Compile"), one pass per file.

``install()`` puts them into Inductor's post-grad hook for every later
``torch.compile``; alternatively pass them per call::

    torch.compile(fn, options={"post_grad_custom_pre_pass": adamw8.compile_passes.GroupFusedStep()})

Passes:
- ``GroupFusedStep`` (group_fused_step.py): single-tensor ``fused_step`` calls of one graph
  become multi-tensor ``fused_step_multi`` calls.
"""

from __future__ import annotations

import torch
import torch._inductor.config as inductor_config
from torch._inductor.custom_graph_pass import CustomGraphPass

from .group_fused_step import GroupFusedStep

__all__ = ["GroupFusedStep", "install", "uninstall", "installed"]


class _Chain(CustomGraphPass):
    """adamw8's passes followed by a pass that was installed before them."""

    def __init__(self, ours: CustomGraphPass, previous):
        self.ours, self.previous = ours, previous

    def __call__(self, graph: torch.fx.Graph) -> None:
        self.ours(graph)
        self.previous(graph)

    def uuid(self):
        prev = self.previous.uuid() if hasattr(self.previous, "uuid") else repr(self.previous)
        return (self.ours.uuid(), prev)


_installed: dict = {}


def install() -> GroupFusedStep:
    """Install adamw8's passes for every later torch.compile (idempotent). Returns the pass."""
    if "pass" in _installed:
        return _installed["pass"]
    ours = GroupFusedStep()
    previous = inductor_config.post_grad_custom_pre_pass
    inductor_config.post_grad_custom_pre_pass = ours if previous is None else _Chain(ours, previous)
    _installed.update({"pass": ours, "previous": previous})
    return ours


def uninstall() -> None:
    """Restore Inductor's post-grad hook as it was before ``install()``."""
    if "pass" in _installed:
        inductor_config.post_grad_custom_pre_pass = _installed["previous"]
        _installed.clear()


def installed() -> bool:
    return "pass" in _installed
