"""Optimizer classes: param groups, state init, state_dict, step() -> ops."""

from .adamw import AdamW, AdamW8bit, AdamW32bit, PagedAdamW, PagedAdamW8bit, PagedAdamW32bit
from .base import AdamWBase
from .manager import GlobalOptimManager

__all__ = [
    "AdamW", "AdamW8bit", "AdamW32bit", "PagedAdamW", "PagedAdamW8bit", "PagedAdamW32bit",
    "AdamWBase", "GlobalOptimManager",
]
