"""setup.py's build decisions that need no compiler: the architectures a CUDA build compiles
for where TORCH_CUDA_ARCH_LIST is unset, the toolkit it accepts, the kernels' build options."""

from __future__ import annotations

import pathlib
import runpy

import pytest
import torch
from torch.utils import cpp_extension

SETUP = runpy.run_path(str(pathlib.Path(__file__).resolve().parents[1] / "setup.py"), run_name="adamw8_setup")
WHEEL_ARCHS = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]  # torch's CUDA 13 wheels


@pytest.fixture
def machine(monkeypatch):
    def set_up(gpus, archs: list[str], env: str | None = None):
        """gpus: how many (of compute capability 9.0), or their capabilities."""
        caps = [(9, 0)] * gpus if isinstance(gpus, int) else list(gpus)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: len(caps))
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: caps[i])
        monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: list(archs))
        if env is None:
            monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
        else:
            monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", env)
        return SETUP["default_arch_list"]()

    return set_up


def test_no_gpu_builds_for_every_architecture_torch_runs_on(machine, monkeypatch):
    """Without a GPU and without TORCH_CUDA_ARCH_LIST, cpp_extension has no architecture to
    build for (torch 2.14 stops with an IndexError); setup.py names torch's own list, in a form
    cpp_extension turns into one -gencode per architecture and PTX for the newest."""
    archs = machine(0, WHEEL_ARCHS)
    assert archs == "7.5;8.0;8.6;9.0;10.0;12.0+PTX"
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", archs)
    flags = cpp_extension._get_cuda_arch_flags()
    for cc in ("75", "80", "86", "90", "100", "120"):
        assert f"-gencode=arch=compute_{cc},code=sm_{cc}" in flags, flags
    assert "-gencode=arch=compute_120,code=compute_120" in flags, flags


def test_a_given_list_or_a_visible_gpu_is_left_to_cpp_extension(machine):
    assert machine(0, WHEEL_ARCHS, env="9.0") is None
    assert machine(1, WHEEL_ARCHS) is None  # cpp_extension builds for the GPUs it sees
    assert machine([(7, 5), (8, 0)], WHEEL_ARCHS) is None
    assert machine([(6, 0)], WHEEL_ARCHS, env="6.0") is None  # the user's choice stands


def test_gpus_older_than_sm75_are_left_out(machine):
    """cpp_extension would compile for every visible GPU; one older than sm_75 is dropped, and
    with none left no CUDA kernels are built ("": the package still installs)."""
    assert machine([(7, 0), (9, 0)], WHEEL_ARCHS) == "9.0+PTX"
    assert machine([(6, 0), (7, 5), (8, 6)], WHEEL_ARCHS) == "7.5;8.6+PTX"
    assert machine([(6, 0)], WHEEL_ARCHS) == ""
    assert machine([(7, 0), (7, 0)], WHEEL_ARCHS) == ""


def test_only_plain_sm_architectures_are_named(machine):
    assert machine(0, ["sm_90a", "compute_90", "sm_80", "sm_100a", "sm_86"]) == "8.0;8.6+PTX"
    # a CUDA 12 wheel's older architectures: the kernels are checked from sm_75 on
    assert machine(0, ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"]) == "7.5;8.0;8.6;9.0+PTX"
    assert machine(0, []) is None  # a CPU build of torch lists none


def test_a_toolkit_of_another_major_version_is_refused_with_the_ways_out(tmp_path, monkeypatch):
    """cpp_extension refuses a toolkit of another CUDA major version than torch's with its
    message's placeholders unfilled; setup.py says it first, naming both versions and the two
    ways out.  A fake toolkit root whose nvcc reports CUDA 12.4, under a torch of CUDA 13.0."""
    root = tmp_path / "cuda-12.4"
    (root / "bin").mkdir(parents=True)
    (root / "include").mkdir()
    (root / "include" / "cuda_runtime.h").write_text("")
    nvcc = root / "bin" / "nvcc"
    nvcc.write_text("#!/bin/sh\necho 'Cuda compilation tools, release 12.4, V12.4.131'\n")
    nvcc.chmod(0o755)
    extension = SETUP["_extension"]
    monkeypatch.setitem(extension.__globals__, "CUDA_ROOT", str(root))
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.delenv("ADAMW8_NO_CUDA", raising=False)
    assert SETUP["toolkit_release"](str(root)) == "12.4"
    with pytest.raises(RuntimeError, match=r"CUDA 12\.4.*CUDA 13\.0.*CUDA 13\.x toolkit.*ADAMW8_NO_CUDA=1"):
        extension()
    monkeypatch.setenv("ADAMW8_NO_CUDA", "1")  # the way out: the C++ extension alone
    assert all(not src.endswith(".cu") for src in extension().sources)


def test_toolkits_of_the_same_major_version_pass():
    mismatch = SETUP["toolkit_mismatch"]
    assert mismatch("13.0", "13.0") is None
    assert mismatch("13.2", "13.0") is None  # cpp_extension warns, and builds
    assert mismatch(None, "13.0") is None  # nvcc did not say: cpp_extension decides
    assert mismatch("12.8", "13.0") is not None


def test_kernel_build_options_become_defines_and_bad_values_are_refused():
    """ADAMW8_MIN_BLOCKS_8BIT and ADAMW8_STAGE reach nvcc as -D flags; unset, the sources'
    defaults hold; a value out of range stops the build naming the variable and what it takes."""
    options = SETUP["kernel_options"]
    assert options({}) == []
    assert options({"ADAMW8_STAGE": "0", "ADAMW8_MIN_BLOCKS_8BIT": "4"}) == [
        "-DADAMW8_MIN_BLOCKS_8BIT=4", "-DADAMW8_STAGE=0"]
    with pytest.raises(RuntimeError, match=r"ADAMW8_STAGE must be an integer from 0 to 2, got 'yes'"):
        options({"ADAMW8_STAGE": "yes"})
    with pytest.raises(RuntimeError, match=r"ADAMW8_MIN_BLOCKS_8BIT must be an integer from 0 to 8, got '9'"):
        options({"ADAMW8_MIN_BLOCKS_8BIT": "9"})
