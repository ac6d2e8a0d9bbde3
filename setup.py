"""Builds adamw8._C, the C++ (and, where a CUDA toolkit is present, CUDA) kernels.

Everything else about the package is in pyproject.toml.  Whether CUDA sources
can be compiled is decided from the installed torch (torch.version.cuda) and
the CUDA toolkit (CUDA_HOME with nvcc), never from the presence of a GPU, so a
build machine without a GPU still builds the CUDA kernels.

The CUDA kernels have not yet been validated on a GPU (issue: CUDA kernels at
the bandwidth floor), so for now they are built only on request:
ADAMW8_EXPERIMENTAL_CUDA=1 (scripts/gpu_check.sh sets it).  Without them, CUDA
tensors run the PyTorch reference, with a warning.  ADAMW8_NO_CUDA=1 always
forces a CPU-only build.
"""

import glob
import os

from setuptools import setup
from torch.utils import cpp_extension

HERE = os.path.dirname(os.path.abspath(__file__))


def _build_cuda() -> bool:
    import torch

    if os.environ.get("ADAMW8_NO_CUDA", "0") == "1" or torch.version.cuda is None:
        return False
    if os.environ.get("ADAMW8_EXPERIMENTAL_CUDA", "0") != "1":
        return False
    home = cpp_extension.CUDA_HOME
    cu = sorted(glob.glob(os.path.join(HERE, "csrc", "*.cu")))
    return bool(cu) and home is not None and os.path.exists(os.path.join(home, "bin", "nvcc"))


def _extension():
    cpp = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    # -ffp-contract=off / --fmad=false: no fused multiply-add, so the kernels
    # and the PyTorch reference round identically (csrc/adamw8_math.h).
    # (the C++ standard is torch's choice: BuildExtension passes the one its headers need)
    cxx = ["-O3", "-ffp-contract=off", "-fopenmp", "-DPy_LIMITED_API=0x03090000"]
    if _build_cuda():
        cu = sorted(glob.glob(os.path.join("csrc", "*.cu")))
        cuda_cpp = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cpp")))
        nvcc = ["-O3", "--fmad=false", "-lineinfo"]
        return cpp_extension.CUDAExtension(
            "adamw8._C",
            cpp + cuda_cpp + cu,
            extra_compile_args={"cxx": cxx, "nvcc": nvcc},
            extra_link_args=["-fopenmp"],
            py_limited_api=True,
        )
    return cpp_extension.CppExtension(
        "adamw8._C", cpp, extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"], py_limited_api=True
    )


setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension},
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)
