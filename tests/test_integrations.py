"""Hugging Face Trainer (adamw8.hf) and accelerate, with a tiny model built from a config (no
downloads).  Skipped where transformers / accelerate are not installed (``pip install
adamw8[hf]``; CI installs them)."""

from __future__ import annotations

import pytest
import torch

import adamw8


def tiny_gpt2():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=128, n_positions=32, n_embd=64, n_layer=2, n_head=2)
    return transformers.GPT2LMHeadModel(config)


class Tokens(torch.utils.data.Dataset):
    def __len__(self):
        return 16

    def __getitem__(self, i):
        ids = torch.arange(i, i + 16) % 128
        return {"input_ids": ids, "labels": ids}


def test_trainer_gets_adamw8_with_its_arguments(manager, tmp_path):
    transformers = pytest.importorskip("transformers")
    import adamw8.hf

    model = tiny_gpt2()
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), learning_rate=3e-3, adam_beta1=0.8, adam_beta2=0.95, adam_epsilon=1e-6,
        weight_decay=0.1, max_steps=3, per_device_train_batch_size=4, report_to=[], use_cpu=True,
        save_strategy="no", logging_steps=1,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Tokens(),
                                   optimizer_cls_and_kwargs=adamw8.hf.optimizer_cls_and_kwargs(args, model,
                                                                                               min_8bit_size=1000))
    wte = model.transformer.wte.weight
    before = wte.detach().clone()
    trainer.train()
    opt = trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
    assert isinstance(opt, adamw8.AdamW8bit)
    groups = opt.param_groups
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]  # Trainer's decay / no-decay groups
    for g in groups:
        assert g["betas"] == (0.8, 0.95) and g["eps"] == 1e-6
    assert any(p.dim() == 1 for p in groups[1]["params"])  # biases and norms: no decay
    # the embedding (tied to the LM head) keeps 32-bit state; other large matrices are 8-bit
    assert opt.state[wte]["state1"].dtype == torch.float32
    attn = model.transformer.h[0].attn.c_attn.weight
    assert opt.state[attn]["state1"].dtype == torch.uint8
    assert int(opt.state[attn]["step"]) == 3 and not torch.equal(wte, before)
    logged = [e["learning_rate"] for e in trainer.state.log_history if "learning_rate" in e]
    assert logged and all(type(v) is float for v in logged)  # plain numbers, as with torch.optim


def test_helper_rejects_bad_arguments(manager):
    import adamw8.hf

    with pytest.raises(ValueError, match=r"optim: expected one of"):
        adamw8.hf.optimizer_cls_and_kwargs(object(), torch.nn.Linear(2, 2), optim="adam")
    with pytest.raises(TypeError, match=r"args: expected TrainingArguments"):
        adamw8.hf.optimizer_cls_and_kwargs(object(), torch.nn.Linear(2, 2))


def test_accelerate_prepares_and_steps(manager):
    accelerate = pytest.importorskip("accelerate")
    accelerator = accelerate.Accelerator(cpu=True)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 300), torch.nn.Tanh(), torch.nn.Linear(300, 4))
    ref = torch.nn.Sequential(torch.nn.Linear(16, 300), torch.nn.Tanh(), torch.nn.Linear(300, 4))
    ref.load_state_dict(model.state_dict())
    opt = adamw8.AdamW8bit(model.parameters(), lr=1e-2, min_8bit_size=1000)
    ref_opt = adamw8.AdamW8bit(ref.parameters(), lr=1e-2, min_8bit_size=1000)
    model, opt = accelerator.prepare(model, opt)
    for i in range(3):
        x = torch.randn(8, 16, generator=torch.Generator().manual_seed(i))
        for m, o, backward in ((model, opt, accelerator.backward), (ref, ref_opt, lambda loss: loss.backward())):
            o.zero_grad()
            backward(m(x).square().mean())
            o.step()
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.equal(p, q)


def test_lightning_configure_optimizers(manager, tmp_path):
    """Lightning: return an adamw8 optimizer from configure_optimizers; the Trainer steps it."""
    L = pytest.importorskip("lightning")

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(16, 300), torch.nn.Tanh(), torch.nn.Linear(300, 4))

        def training_step(self, batch, _):
            return self.net(batch[0]).square().mean()

        def configure_optimizers(self):
            return adamw8.AdamW8bit(self.parameters(), lr=1e-2, min_8bit_size=1000)

    torch.manual_seed(0)
    module = Module()
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(32, 16)), batch_size=8)
    before = module.net[0].weight.detach().clone()
    trainer = L.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path))
    trainer.fit(module, data)
    opt = trainer.optimizers[0]
    assert isinstance(opt, adamw8.AdamW8bit)
    assert int(opt.state[module.net[0].weight]["step"]) == 3 and not torch.equal(module.net[0].weight, before)
    assert opt.state[module.net[0].weight]["state1"].dtype == torch.uint8
