"""The README's Python examples run as written (quick start, GlobalOptimManager)."""

from __future__ import annotations

import pathlib
import re

import torch

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 2
    namespace: dict = {}
    try:
        for block in blocks:
            exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - the README is ours
        opt, model = namespace["opt"], namespace["model"]
        assert opt.state[model[0].weight]["state1"].dtype == torch.uint8
        assert all(torch.isfinite(p).all() for p in model.parameters())
    finally:  # the examples install global things: leave the process as it was
        import adamw8

        adamw8.GlobalOptimManager.get_instance().initialize()
        adamw8.compile_passes.uninstall()
        torch._dynamo.reset()
