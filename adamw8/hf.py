"""Hugging Face Trainer: adamw8 the way ``optim="adamw_bnb_8bit"`` gives bitsandbytes.

    import adamw8.hf
    trainer = Trainer(model=model, args=args, train_dataset=ds,
                      optimizer_cls_and_kwargs=adamw8.hf.optimizer_cls_and_kwargs(args, model))

What it does, as Trainer does for bitsandbytes:
- TrainingArguments' ``learning_rate``, ``adam_beta1``/``adam_beta2`` and ``adam_epsilon``
  become the optimizer's; ``weight_decay`` stays per group (Trainer builds its decay and
  no-decay groups and hands them to the class);
- every ``nn.Embedding`` weight of ``model`` keeps 32-bit state (GlobalOptimManager), as
  Trainer arranges for bitsandbytes' 8-bit optimizers.

transformers is not a dependency of adamw8: ``pip install adamw8[hf]``.
"""

from __future__ import annotations

import torch

from .optim import AdamW, AdamW8bit, AdamW32bit, GlobalOptimManager, PagedAdamW8bit

CLASSES = {"adamw_8bit": AdamW8bit, "adamw_32bit": AdamW32bit, "paged_adamw_8bit": PagedAdamW8bit, "adamw": AdamW}


def optimizer_cls_and_kwargs(args, model: torch.nn.Module, optim: str = "adamw_8bit", **kwargs):
    """``(optimizer class, keyword arguments)`` for ``Trainer(optimizer_cls_and_kwargs=...)``.

    ``args``: the TrainingArguments; ``model``: the model the Trainer trains (its embeddings
    get 32-bit state); ``optim``: one of ``adamw8.hf.CLASSES``; ``kwargs``: more constructor
    arguments (``min_8bit_size``, ``amsgrad``, ...), which win over the ones from ``args``."""
    if optim not in CLASSES:
        raise ValueError(f"optim: expected one of {sorted(CLASSES)}, got {optim!r}")
    for name in ("learning_rate", "adam_beta1", "adam_beta2", "adam_epsilon"):
        if not hasattr(args, name):
            raise TypeError(f"args: expected TrainingArguments (with {name}), got {type(args).__name__}")
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    cls = CLASSES[optim]
    if cls is not AdamW32bit:
        mng = GlobalOptimManager.get_instance()
        for module in model.modules():
            if isinstance(module, torch.nn.Embedding):
                mng.register_module_override(module, "weight", {"optim_bits": 32})
    out = dict(lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)
    out.update(kwargs)
    return cls, out
