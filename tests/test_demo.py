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
