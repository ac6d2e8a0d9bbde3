"""adamw8: the bitsandbytes AdamW family as torch.library custom ops."""

from . import ops  # noqa: F401  (declares torch.ops.adamw8.* and loads the kernels)

__version__ = "0.1.0"
