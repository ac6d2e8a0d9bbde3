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
