"""Sources and compiler flags of the featup_kernels extension, shared by setup.py and the JIT build.

featup/ops/_extension.py loads this file by path when it compiles the kernels on first use; setup.py imports
it for the ahead-of-time build. Keep it free of imports beyond the standard library.
"""

from __future__ import annotations

import sys
from pathlib import Path

NAME = "featup_kernels"
ROOT = Path(__file__).resolve().parent
CPU_SOURCES = (
    "csrc/adaptive_conv.cpp",
    "csrc/adaptive_conv_checks.cpp",
    "csrc/adaptive_conv_cpu.cpp",
    "csrc/jbu_cpu.cpp",
)
CUDA_SOURCES = ("csrc/adaptive_conv_cuda.cu",)

# at::parallel_for only spawns threads in code compiled with OpenMP; libgomp is the one torch already loaded.
_OPENMP = ["-fopenmp"] if sys.platform.startswith("linux") else []
CXX_FLAGS = ["-O3", *_OPENMP]
LD_FLAGS = [*_OPENMP]
NVCC_FLAGS = ["-O3", "-lineinfo"]


def sources(with_cuda: bool) -> list[str]:
    """Absolute paths of the sources to compile, with the CUDA kernels or without."""
    names = CPU_SOURCES + (CUDA_SOURCES if with_cuda else ())
    return [str(ROOT / name) for name in names]
