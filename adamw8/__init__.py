"""adamw8: the bitsandbytes AdamW family as torch.library custom ops.

``AdamW``, ``AdamW8bit``, ``AdamW32bit``, ``PagedAdamW``, ``PagedAdamW8bit`` and
``PagedAdamW32bit`` take bitsandbytes' constructor arguments; the step is
``torch.ops.adamw8.fused_step_multi`` (``fused_step`` for one parameter), which
``torch.compile(opt.step, fullgraph=True)`` captures whole.
"""

from . import ops  # noqa: F401  (declares torch.ops.adamw8.* and loads the kernels)
from . import tuning
from .optim import (
    AdamW,
    AdamW8bit,
    AdamW32bit,
    GlobalOptimManager,
    PagedAdamW,
    PagedAdamW8bit,
    PagedAdamW32bit,
)

__version__ = "0.1.0"

tuning.load_at_import()  # this CPU's launch configs from adamw8/profiles/, if tuned

__all__ = [
    "AdamW", "AdamW8bit", "AdamW32bit", "PagedAdamW", "PagedAdamW8bit", "PagedAdamW32bit",
    "GlobalOptimManager", "ops", "compile_passes", "tuning",
]


def __getattr__(name):
    # compile_passes imports parts of Inductor: loaded on first use, not with the package
    if name == "compile_passes":
        import importlib

        return importlib.import_module(".compile_passes", __name__)
    raise AttributeError(f"module 'adamw8' has no attribute {name!r}")
