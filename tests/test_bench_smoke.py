"""The benchmark script runs end to end (tiny scale, CPU): its numbers are not checked here —
performance figures live in benchmarks/RESULTS.md, never in a timed unit test."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "bench_step.py"


def load():
    spec = importlib.util.spec_from_file_location("bench_step", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_sets_have_the_specified_tensor_counts_and_sizes():
    b = load()
    llama = b.shapes(b.SETS["llama-1.26b"])
    gpt2 = b.shapes(b.SETS["gpt2-160m"])
    count = lambda shp: sum(__import__("math").prod(s) for s in shp)  # noqa: E731
    assert len(llama) == 201 and count(llama) == pytest.approx(1.26e9, rel=0.01)
    assert len(gpt2) == 111 and count(gpt2) == pytest.approx(1.60e8, rel=0.03)


def test_bench_runs_on_cpu(capsys):
    b = load()
    results = b.main(["--device", "cpu", "--scale", "0.01", "--steps", "2", "--warmup", "1", "--no-bnb",
                      "--sets", "gpt2-160m", "--dtypes", "fp32"])
    rows = results[("gpt2-160m", "fp32")]
    assert {r[0] for r in rows} >= {"torch AdamW fused", "adamw8 AdamW8bit", "adamw8 AdamW32bit"}
    assert all(r[1] is not None and r[1] > 0 for r in rows)
    assert "| adamw8 AdamW8bit |" in capsys.readouterr().out


def test_bench_interleaved_takes_turns(monkeypatch):
    """--interleave: every optimizer built first, then one step each per round; each gets
    warmup + steps steps, in turn."""
    b = load()
    calls = []
    real = b.timed

    def timed(fn, *a, **k):
        if hasattr(fn, "__self__"):  # an optimizer's step (not the copy-bandwidth probe)
            calls.append(type(fn.__self__).__name__)
        return real(fn, *a, **k)

    monkeypatch.setattr(b, "timed", timed)
    results = b.main(["--device", "cpu", "--scale", "0.01", "--steps", "3", "--warmup", "1", "--no-bnb", "--interleave",
                      "--sets", "gpt2-160m", "--dtypes", "fp32", "--only", "adamw8 AdamW8bit"])
    rows = results[("gpt2-160m", "fp32")]
    assert [r[0] for r in rows] == ["torch AdamW fused", "adamw8 AdamW8bit"]
    assert all(r[1] is not None and r[1] > 0 for r in rows)
    assert calls == ["AdamW", "AdamW8bit"] * 4  # in turns, warmup included
    assert rows[0][3] == 1.0 and rows[1][3] > 0  # the paired ratio: torch's own is exactly 1


AB = BENCH.parent / "cpu_ab" / "ab_step8.sh"


@pytest.mark.skipif(shutil.which("g++") is None or shutil.which("git") is None, reason="needs g++ and git")
def test_cpu_ab_tool_builds_both_versions_and_checks_their_bits():
    """benchmarks/cpu_ab/ab_step8.sh (the A/B timing of two revisions of the CPU kernels) builds,
    finds both versions give the same bits, and reports the paired ratio, for fp32, bf16 and
    fp16 parameters; a bad argument is refused with its usage."""
    import torch

    if not torch.backends.cpu.get_cpu_capability().startswith("AVX"):
        pytest.skip("the tool's smallest build needs AVX2")
    root = BENCH.parents[1]
    if subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    env = dict(os.environ, PYTHON=sys.executable)
    for dtype in ("fp32", "bf16", "fp16"):
        r = subprocess.run(["bash", str(AB), "HEAD", "work", "avx2", "4099", "3"], capture_output=True, text=True,
                           env=dict(env, AB_DTYPE=dtype), cwd=root)
        assert r.returncode == 0, r.stderr
        m = re.search(rf"same bits; 4099 {dtype} elements, 3 rounds: .* B / A ([0-9.]+)", r.stdout)
        assert m and float(m.group(1)) > 0, r.stdout
    bad = subprocess.run(["bash", str(AB), "HEAD", "work", "sse2"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "BUILD must be avx512vbmi, avx512 or avx2" in bad.stderr


def test_op_costs_probe_measures_every_instruction(tmp_path):
    """benchmarks/cpu_ab/op_costs.cpp (the instruction costs RESULTS.md quotes) compiles and
    reports a positive figure for each of its instructions, the divider's far above a load's."""
    from adamw8 import tuning

    if shutil.which("g++") is None:
        pytest.skip("needs g++")
    if not tuning.available() or "avx512vbmi" not in tuning.capabilities():
        pytest.skip("the probe runs AVX-512 VBMI instructions (the CPU kernels' avx512vbmi build)")
    exe = tmp_path / "op_costs"
    src = BENCH.parent / "cpu_ab" / "op_costs.cpp"
    subprocess.run(["g++", "-O2", "-o", str(exe), str(src)], check=True)
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    rows = {(m.group(1).strip(), m.group(2)): float(m.group(3))
            for m in re.finditer(r"^(.{34}) (throughput|latency) +([0-9.]+) cycles$", out, re.M)}
    assert len(rows) == 21 and all(v > 0 for v in rows.values()), out
    assert rows[("vdivps zmm", "throughput")] > 2 * rows[("zmm load", "throughput")], out
