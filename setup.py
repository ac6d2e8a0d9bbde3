"""Builds adamw8._C, the C++ (and, where a CUDA toolkit is present, CUDA) kernels.

Everything else about the package is in pyproject.toml.  Whether CUDA sources
can be compiled is decided from the installed torch (torch.version.cuda) and
the CUDA toolkit (CUDA_HOME with nvcc), never from the presence of a GPU, so a
build machine without a GPU still builds the CUDA kernels.

A CUDA build of torch with a CUDA toolkit builds the CUDA kernels (they have
passed their tests and compute-sanitizer on a GPU: benchmarks/RESULTS.md).
Without them, CUDA tensors run the PyTorch reference, with a warning.
ADAMW8_NO_CUDA=1 always forces a CPU-only build.
"""

import glob
import os
import platform
import re
import shutil
import subprocess

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _is_toolkit_root(path) -> bool:
    return bool(path) and all(
        os.path.exists(os.path.join(path, *rel)) for rel in (("bin", "nvcc"), ("include", "cuda_runtime.h"))
    )


def _cuda_home():
    """The CUDA toolkit's root: the directory whose bin/ holds the real nvcc and whose include/
    holds cuda_runtime.h.  torch's cpp_extension guesses it from the nvcc first on PATH, which
    is wrong where that nvcc is a wrapper script (/usr/local/bin/nvcc -> the build then fails
    on cuda_runtime.h), so it is found here and handed to cpp_extension through CUDA_HOME.
    A CUDA_HOME set by the user must be a toolkit root; None: no toolkit."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            if not _is_toolkit_root(os.environ[var]):
                raise RuntimeError(f"adamw8: {var}={os.environ[var]} is not a CUDA toolkit root: expected "
                                   f"bin/nvcc and include/cuda_runtime.h under it")
            return os.environ[var]
    nvcc = shutil.which("nvcc")
    candidates = ["/usr/local/cuda"] + ([os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))] if nvcc else [])
    return next((c for c in candidates if _is_toolkit_root(c)), None)


CUDA_ROOT = _cuda_home()
if CUDA_ROOT is not None:
    os.environ["CUDA_HOME"] = CUDA_ROOT  # read by cpp_extension at import

from torch.utils import cpp_extension  # noqa: E402


def _build_cuda() -> bool:
    import torch

    if os.environ.get("ADAMW8_NO_CUDA", "0") == "1" or torch.version.cuda is None:
        return False
    return CUDA_ROOT is not None and bool(glob.glob(os.path.join(HERE, "csrc", "*.cu")))


def toolkit_release(root):
    """The CUDA toolkit's release ("13.0") from `nvcc --version`, or None where it cannot say."""
    try:
        out = subprocess.run([os.path.join(root, "bin", "nvcc"), "--version"], capture_output=True, text=True,
                             timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"release (\d+)\.(\d+)", out)
    return f"{m.group(1)}.{m.group(2)}" if m else None


def toolkit_mismatch(release, torch_cuda):
    """Why the toolkit cannot build kernels for this torch, or None.  cpp_extension refuses a
    toolkit of another CUDA major version than torch's, with its message's placeholders
    unfilled; this says it first, with the two ways out."""
    if not release or not torch_cuda or release.split(".")[0] == torch_cuda.split(".")[0]:
        return None
    return (f"adamw8: the CUDA toolkit at {CUDA_ROOT} is CUDA {release}, and this torch was built with CUDA "
            f"{torch_cuda}: the CUDA kernels need a toolkit of the same major version. Point CUDA_HOME at a CUDA "
            f"{torch_cuda.split('.')[0]}.x toolkit, or set ADAMW8_NO_CUDA=1 to build without the CUDA kernels (CUDA "
            "tensors then run the PyTorch reference).")


MIN_ARCH = 75  # sm_75: the oldest architecture CUDA 13 builds for and check_kernels.py checks


def default_arch_list():
    """The TORCH_CUDA_ARCH_LIST for a CUDA build that names none: None to leave it unset, "" for
    no CUDA kernels at all.  A list given by the user is theirs.  Otherwise cpp_extension
    compiles for the GPUs it sees:
      - where they are all sm_75 or later, that is its choice;
      - a GPU older than sm_75 is left out (the kernels are not checked there, and before
        Volta their launch record is larger than the 4 KB of kernel parameters CUDA allows),
        and with no other GPU nothing CUDA is built (CUDA tensors run the PyTorch reference,
        with a warning, and the rest of the package installs);
      - with no GPU at all (a build machine, a container build, a cluster's login node)
        cpp_extension stops with a bare IndexError (torch 2.14), so every architecture this
        torch was built for from sm_75 on is named, the newest also as PTX: sm_75 ... sm_120
        for torch's CUDA 13 wheels."""
    import torch

    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return None
    gpus = torch.cuda.device_count()
    if gpus > 0:
        caps = sorted({tuple(torch.cuda.get_device_capability(i)) for i in range(gpus)})
        keep = [c for c in caps if 10 * c[0] + c[1] >= MIN_ARCH]
        if len(keep) == len(caps):
            return None
        return ";".join(f"{a}.{b}" for a, b in keep) + ("+PTX" if keep else "")
    archs = sorted({a[3:] for a in torch.cuda.get_arch_list() if a.startswith("sm_") and a[3:].isdigit()
                    and int(a[3:]) >= MIN_ARCH}, key=int)
    if not archs:
        return None
    return ";".join(f"{a[:-1]}.{a[-1]}" for a in archs) + "+PTX"


# -ffp-contract=off / --fmad=false: no fused multiply-add, so the kernels and the
# PyTorch reference round identically (csrc/adamw8_math.h).  The C++ standard of
# the host code is torch's choice (BuildExtension passes the one its headers need);
# the kernels need C++20.  scripts/check_kernels.py compiles with these same flags.
CXX_FLAGS = ["-O3", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math", "-fopenmp", "-DPy_LIMITED_API=0x03090000"]
NVCC_FLAGS = ["-O3", "--fmad=false", "-lineinfo", "-std=c++20"]


# Build options of the CUDA kernels (csrc/fused_step_cuda.h, csrc/fused_step_*.cuh), each
# an environment variable and the integers it takes; unset: the sources' default.
#   ADAMW8_MIN_BLOCKS_8BIT=N (0-8): compile the 8-bit update kernels for at least N resident blocks
#     per SM (0: no minimum, ptxas's choice); default 3.
#   ADAMW8_STAGE=N (0-2): which update kernels stage each warp's next unit through shared memory
#     (cp.async, sm_80 on): 0 none, 1 the 8-bit kernels of 16-bit parameters (the default), 2 also
#     those of fp32 parameters and the 32-bit ones but amsgrad (csrc/fused_step_stage.cuh).
KERNEL_OPTIONS = {"ADAMW8_MIN_BLOCKS_8BIT": range(0, 9), "ADAMW8_STAGE": range(0, 3)}


def kernel_options(environ=os.environ):
    """nvcc's -D flags for the build options set in `environ`."""
    flags = []
    for name, allowed in KERNEL_OPTIONS.items():
        raw = environ.get(name)
        if raw is None:
            continue
        if not raw.isdigit() or int(raw) not in allowed:
            raise RuntimeError(f"adamw8: {name} must be an integer from {allowed[0]} to {allowed[-1]}, got {raw!r}")
        flags.append(f"-D{name}={int(raw)}")
    return flags


NVCC_FLAGS += kernel_options()


def _gcc_on_x86():
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        out = subprocess.run([os.environ.get("CXX", "c++"), "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return False
    return "Free Software Foundation" in out.stdout and "clang" not in out.stdout.lower()


# GCC's generic tuning never emits gather instructions; the AVX2/AVX-512 CPU kernels
# (csrc/cpu/kernels.h) need them for the 8-bit map lookups, and this turns on exactly that.
if _gcc_on_x86():
    CXX_FLAGS.append("-mtune-ctrl=use_gather")


def _loaded_libstdcxx():
    """The path of the libstdc++.so.6 this process (torch) has loaded, or None."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if line.rstrip().endswith("/libstdc++.so.6")
                     or "/libstdc++.so.6." in line}
    except OSError:
        return None
    return next((p for p in sorted(paths) if os.path.exists(p)), None)


def _libstdcxx_link_args():
    """Link the C++ runtime as the shared library torch has loaded.  A toolchain without
    libstdc++.so (only libstdc++.a) makes the linker take the static archive without a word; the
    extension then carries its own copy of the locale machinery, which disagrees with the
    process's, and formatting a number into an error message crashes the process.  Seen on the
    device on 2026-11-26 and again on 2026-11-27, where
    tests/test_fallback.py::test_extension_uses_the_process_cxx_runtime failed after the build and
    the oversubscription refusal of _managed_empty crashed.  Naming the loaded runtime ahead of
    the compiler's implicit -lstdc++ resolves every runtime symbol from it (NEEDED
    libstdc++.so.6), whatever the toolchain has; where it is not found, -l:libstdc++.so.6."""
    if platform.system() != "Linux":
        return []
    return [_loaded_libstdcxx() or "-l:libstdc++.so.6"]  # torch is loaded: cpp_extension's import


LINK_ARGS = ["-fopenmp", *_libstdcxx_link_args()]


def _extension():
    cpp = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    cxx = CXX_FLAGS
    build_cuda = _build_cuda()
    if build_cuda:
        import torch

        mismatch = toolkit_mismatch(toolkit_release(CUDA_ROOT), torch.version.cuda)
        if mismatch:
            raise RuntimeError(mismatch)
    archs = default_arch_list() if build_cuda else None
    if archs == "":
        print("adamw8: every GPU here is older than sm_75, the oldest the CUDA kernels are built and checked for: "
              "building without them (CUDA tensors run the PyTorch reference)")
    elif archs is not None:
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs
        print(f"adamw8: TORCH_CUDA_ARCH_LIST unset: building the CUDA kernels for {archs} (set it, e.g. 9.0 for an "
              "H100, to choose)")
    if build_cuda and archs != "":
        cu = sorted(glob.glob(os.path.join("csrc", "*.cu")))
        cuda_cpp = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cpp")))
        return cpp_extension.CUDAExtension(
            "adamw8._C",
            cpp + cuda_cpp + cu,
            extra_compile_args={"cxx": cxx, "nvcc": NVCC_FLAGS},
            extra_link_args=LINK_ARGS,
            py_limited_api=True,
        )
    return cpp_extension.CppExtension(
        "adamw8._C", cpp, extra_compile_args={"cxx": cxx}, extra_link_args=LINK_ARGS, py_limited_api=True
    )


if __name__ == "__main__":  # setuptools runs this file as __main__; check_kernels.py reads the flags
    setup(
        ext_modules=[_extension()],
        cmdclass={"build_ext": cpp_extension.BuildExtension},
        options={"bdist_wheel": {"py_limited_api": "cp39"}},
    )
