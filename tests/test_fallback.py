"""Without the compiled extension the ops still exist (PyTorch reference), warn once, and give
the same results as the C++ kernels."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest
import torch

import adamw8

SCRIPT = r"""
import sys, warnings, torch
sys.path.insert(0, TESTS)
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    import adamw8
msgs = [str(x.message) for x in w if "adamw8" in str(x.message)]
assert len(msgs) == 1 and "pip install --no-build-isolation" in msgs[0], msgs
assert adamw8.ops.using_reference["cpu"]
import test_fallback
torch.save(getattr(test_fallback, FN)(), OUT)
"""


def run_steps():
    torch.manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(n)) for n in (5000, 300, 1)]
    opt = adamw8.AdamW8bit(ps, lr=1e-2, min_8bit_size=1000, amsgrad=True, percentile_clipping=90)
    for _ in range(5):
        for p in ps:
            p.grad = torch.randn_like(p)
        opt.step()
    return [p.detach() for p in ps] + [opt.state[ps[0]]["state1"], opt.state[ps[0]]["absmax2"]]


def run_compiled_after_a_refused_step():
    """Compiled steps after one refused while tracing (a grown parameter): Dynamo runs that
    frame eagerly, and must not trace into the op's Python kernel (the reference's) then, or
    later: so traced, it once wrote garbage into the second block of a parameter."""
    torch.manual_seed(0)
    first = [torch.nn.Parameter(torch.randn(n)) for n in (100, 300)]
    opt = adamw8.AdamW8bit(first, min_8bit_size=0)
    step = torch.compile(opt.step)
    for p in first:
        p.grad = torch.randn_like(p)
    step()
    first[0].data, first[0].grad = torch.randn(101), torch.randn(101)
    with pytest.raises(RuntimeError, match="state was made for"):
        step()
    ps = [torch.nn.Parameter(torch.randn(n)) for n in (100, 300)]
    opt = adamw8.AdamW8bit(ps, min_8bit_size=0)
    step = torch.compile(opt.step)
    for _ in range(2):
        for p in ps:
            p.grad = torch.randn_like(p)
        step()
    return [p.detach() for p in ps] + [opt.state[ps[1]]["state1"], opt.state[ps[1]]["absmax1"]]


@pytest.mark.parametrize("fn", ["run_steps", "run_compiled_after_a_refused_step"])
def test_reference_fallback_matches_kernels(tmp_path, fn):
    assert not adamw8.ops.using_reference["cpu"], "this process should run the C++ kernels"
    out = tmp_path / "ref.pt"
    env = dict(os.environ, ADAMW8_NO_EXTENSION="1")
    header = f"OUT = {str(out)!r}\nTESTS = {str(pathlib.Path(__file__).parent)!r}\nFN = {fn!r}\n"
    subprocess.run([sys.executable, "-c", header + SCRIPT], env=env, check=True)
    ref = torch.load(out)
    for a, b in zip(getattr(sys.modules[__name__], fn)(), ref):
        assert torch.equal(a, b)


def _extension_file():
    return next(iter(sorted(pathlib.Path(adamw8.__file__).parent.glob("_C*.so"))), None)


def test_extension_uses_the_process_cxx_runtime():
    """The extension links the shared libstdc++ and carries no copy of its own: a static copy
    (what a toolchain without libstdc++.so links silently) keeps separate locale facet ids,
    and formatting a number into an error message then crashes the process (setup.py,
    _libstdcxx_link_args)."""
    so = _extension_file()
    if sys.platform != "linux" or so is None or not (shutil.which("readelf") and shutil.which("nm")):
        pytest.skip("needs the compiled extension on Linux, with readelf and nm")
    needed = subprocess.run(["readelf", "-d", str(so)], capture_output=True, text=True, check=True).stdout
    assert "libstdc++.so.6" in needed, needed
    defined = subprocess.run(["nm", "-C", "--defined-only", str(so)], capture_output=True, text=True, check=True).stdout
    own = [line for line in defined.splitlines() if "std::locale::" in line or "read_utf8_code_point" in line]
    assert not own, own[:5]
