"""Ahead-of-time build of the featup kernels as the `featup_kernels` module, for Docker images and wheels.

    pip install --no-build-isolation ./kernels             # into the current environment (needs torch there)
    python kernels/setup.py build_ext --build-lib DIR      # just the library, importable from DIR (relative
                                                           # paths are taken from kernels/)

featup.ops imports `featup_kernels` when it is installed and JIT-builds kernels/csrc otherwise. The CUDA kernels
are included when torch is a CUDA build and a CUDA toolkit is found; FEATUP_KERNELS_CUDA=0/1 overrides that.
Without a GPU on the build machine set TORCH_CUDA_ARCH_LIST, e.g. "8.0;8.6;9.0". The module is tied to the
torch version it was built against.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from setuptools import setup
from torch.utils.cpp_extension import (
    CUDA_HOME,
    BuildExtension,
    CppExtension,
    CUDAExtension,
)

# Run from this folder whoever calls: setuptools would otherwise read the featup package's pyproject.toml in
# the repository root as this project's configuration.
os.chdir(Path(__file__).resolve().parent)
sys.path.insert(0, os.getcwd())
import build_config  # next to this file


def with_cuda() -> bool:
    forced = os.environ.get("FEATUP_KERNELS_CUDA")
    if forced is not None:
        return forced == "1"
    return torch.version.cuda is not None and CUDA_HOME is not None


def extension():
    cuda = with_cuda()
    kind = CUDAExtension if cuda else CppExtension
    return kind(
        name=build_config.NAME,
        sources=list(build_config.CPU_SOURCES + (build_config.CUDA_SOURCES if cuda else ())),
        extra_compile_args={"cxx": build_config.CXX_FLAGS, "nvcc": build_config.NVCC_FLAGS},
        extra_link_args=build_config.LD_FLAGS,
    )


setup(
    name="featup-kernels",
    version="0.1.0",
    description="Compiled adaptive-convolution kernels (CPU, CUDA) for featup",
    license="MIT",
    python_requires=">=3.11",
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension},
)
