"""The README's main job, shortened: ``python -m adamw8.demo [--compile]`` runs to the end."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from adamw8 import demo


@pytest.mark.parametrize("compile_", [False, True], ids=["eager", "compiled"])
def test_demo_runs_to_the_end(compile_, capsys):
    torch._dynamo.reset()
    counters.clear()
    argv = ["--steps", "12", "--batch", "8", "--device", "cpu"] + (["--compile"] if compile_ else [])
    results = demo.main(argv)
    assert set(results) == {"AdamW32bit", "AdamW8bit"}
    for losses, ms, bytes_per_param in results.values():
        assert len(losses) == 12 and all(x == x for x in losses)
    assert results["AdamW8bit"][2] < 2.2 < 7.9 < results["AdamW32bit"][2]  # ~2.1 and 8 bytes per parameter
    if compile_:  # OneCycleLR cycles lr and beta1 every step: one graph per optimizer, no recompile
        assert counters["stats"]["unique_graphs"] == 2, dict(counters["stats"])
    assert "final loss" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "--steps: expected an integer in [1, 10000000], got 0"),
    (["--batch", "-3"], "--batch: expected an integer in [1, 65536], got -3"),
    (["--ctx", "0"], "--ctx: expected an integer in [1, 4096], got 0"),  # was a NaN loss
    (["--lr", "nan"], "--lr: expected a finite number > 0, got nan"),
    (["--device", "tpu"], "--device: expected a torch device such as cpu or cuda, got 'tpu'"),
], ids=["steps", "batch", "ctx", "lr", "device"])
def test_demo_refuses_bad_arguments_with_a_usage_error(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        demo.main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err
