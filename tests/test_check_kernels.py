"""scripts/check_kernels.py's reading of ptxas's report (no toolkit needed): each kernel's spills
are its own, not those of a helper function ptxas reports after it."""

from __future__ import annotations

import pathlib
import runpy

import pytest

CHECK = runpy.run_path(str(pathlib.Path(__file__).resolve().parents[1] / "scripts" / "check_kernels.py"),
                       run_name="check_kernels")

# The shape of `ptxas -v` (CUDA 13.0, sm_90) for two kernels, the first of which calls pow's slow path.
REPORT = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_ZN6adamw84cuda17fused_step_kernelIfLb1ELb0ELi0EEEvNS0_10LaunchArgsE' for 'sm_90'
ptxas info    : Function properties for _ZN6adamw84cuda17fused_step_kernelIfLb1ELb0ELi0EEEvNS0_10LaunchArgsE
    56 bytes stack frame, 84 bytes spill stores, 188 bytes spill loads
ptxas info    : Used 80 registers, used 1 barriers, 56 bytes cumulative stack size, 45081 bytes smem
ptxas info    : Compile time = 876.097 ms
ptxas info    : Function properties for __internal_accurate_pow
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Compiling entry function '_ZN6adamw84cuda13finish_kernelENS0_10LaunchArgsE' for 'sm_90'
ptxas info    : Function properties for _ZN6adamw84cuda13finish_kernelENS0_10LaunchArgsE
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 22 registers
"""

K8 = "_ZN6adamw84cuda17fused_step_kernelIfLb1ELb0ELi0EEEvNS0_10LaunchArgsE"
FIN = "_ZN6adamw84cuda13finish_kernelENS0_10LaunchArgsE"


def test_a_kernel_keeps_its_own_spills():
    r = CHECK["parse_ptxas"](REPORT)
    assert set(r) == {K8, FIN}  # the helper is not a kernel
    assert r[K8] == {"stack": 56, "spill_st": 84, "spill_ld": 188, "regs": 80, "smem": 45081}
    assert r[FIN] == {"stack": 0, "spill_st": 0, "spill_ld": 0, "regs": 22, "smem": 0}
    problems = CHECK["check"]({}, r)
    assert problems == ["update fp32 8-bit pass 0: 84 bytes of spill stores, 188 of spill loads"]


def test_a_kernel_without_its_spill_line_stops_the_check():
    broken = "\n".join(line for line in REPORT.splitlines() if "56 bytes stack frame" not in line)
    with pytest.raises(SystemExit, match="no stack and spill line"):
        CHECK["parse_ptxas"](broken)


# PTX of a staging update kernel (8-bit, bf16 parameters, pass 0), reduced to what the access rules read.
KB8 = "_ZN6adamw84cuda17fused_step_kernelI13__nv_bfloat16Lb1ELb0ELi0EEEvNS0_10LaunchArgsE"
PTX_K8 = """\
.version 9.0
\t// .globl\tKERNEL
.visible .entry KERNEL(
{
\tld.global.cs.v4.f32 \t{%f1, %f2, %f3, %f4}, [%rd1];
\tld.global.cs.v2.u32 \t{%r1, %r2}, [%rd2];
\tld.global.cs.v2.u32 \t{%r3, %r4}, [%rd3];
\tcp.async.cg.shared.global [%r5], [%rd4], 16;
\tcp.async.ca.shared.global [%r6], [%rd5], 8;
\tcp.async.ca.shared.global [%r7], [%rd6], 4;
\tcp.async.commit_group;
\tcp.async.wait_group 0;
\tst.global.cs.v4.f32 \t[%rd1], {%f1, %f2, %f3, %f4};
\tst.global.cs.v2.u32 \t[%rd2], {%r1, %r2};
\tst.global.cs.v2.u32 \t[%rd3], {%r3, %r4};
}
""".replace("KERNEL", KB8)


def _ptx_counts(tmp_path, monkeypatch, text):
    """check_kernels' reading of `text` as the PTX nvcc wrote (nvcc itself stubbed out)."""
    monkeypatch.setitem(CHECK["ptx_accesses"].__globals__, "subprocess",
                        type("NoNvcc", (), {"run": staticmethod(lambda *a, **kw: None)}))
    (tmp_path / "k.ptx").write_text(text)
    return CHECK["ptx_accesses"]("nvcc", [], str(tmp_path), "fused_step_cuda.cu")


def test_the_staging_rule(tmp_path, monkeypatch):
    """A staging kernel passes with its cp.async copies and wait, and fails without the 8-byte
    copies of its codes or without the wait; a kernel that does not stage (fp32 parameters)
    needs none, unless the build stages it (ADAMW8_STAGE=2)."""
    ok = _ptx_counts(tmp_path, monkeypatch, PTX_K8)
    assert ok[KB8]["cp.async.16"] == 1 and ok[KB8]["cp.async.8"] == 1 and ok[KB8]["cp.async.4"] == 1
    assert CHECK["check"](ok, {}) == []
    unstaged = _ptx_counts(tmp_path, monkeypatch, "\n".join(
        line for line in PTX_K8.replace(KB8, K8).splitlines() if "cp.async" not in line))
    assert unstaged[K8]["cp.async.16"] == 0 and CHECK["check"](unstaged, {}) == []
    # built with ADAMW8_STAGE=2 the fp32 kernel stages too
    assert CHECK["check"](unstaged, {}, stage=2) == [
        "update fp32 8-bit pass 0: the next unit is not staged by cp.async of (16, 8, 4) bytes with a wait"]
    no_codes = _ptx_counts(tmp_path, monkeypatch, PTX_K8.replace("], 8;", "], 16;"))
    no_wait = _ptx_counts(tmp_path, monkeypatch, PTX_K8.replace("\tcp.async.wait_group 0;\n", ""))
    for counts in (no_codes, no_wait):
        assert CHECK["check"](counts, {}) == [
            "update bf16 8-bit pass 0: the next unit is not staged by cp.async of (16, 8, 4) bytes with a wait"]
