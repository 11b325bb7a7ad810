"""The compiled adaptive-conv kernels of kernels/: found or built on first use, then wired into autograd.

Importing this module compiles nothing. The first call of `compiled_adaptive_conv` loads, in this order:

1. an ahead-of-time build installed as the `featup_kernels` module (`pip install ./kernels`, for Docker
   images and wheels), or
2. a JIT build of kernels/csrc with `torch.utils.cpp_extension.load`, cached in the torch extensions
   directory (`TORCH_EXTENSIONS_DIR`, default ~/.cache/torch_extensions); the CUDA sources are included
   when torch sees a GPU and a CUDA toolkit is found.

Either registers the C++ ops `torch.ops.featup.adaptive_conv_forward` / `adaptive_conv_backward`; this
module then registers their autograd formula and shape-only (fake) kernels, so that they work under
`torch.compile`. What failed is kept, and `compiled_unavailable_reason` says it for the fallback warning.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import os
import sys
import time
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

_BUILD_CONFIG = Path(__file__).resolve().parents[2] / "kernels" / "build_config.py"
_AOT_MODULE = "featup_kernels"
_REASON_CHARS = 2000  # a failed build's log can be long; its end says what went wrong


@dataclass(frozen=True)
class _Kernels:
    """Outcome of loading the extension once per process."""

    origin: str | None  # the installed module or JIT build folder the ops came from; None if none loaded
    problems: str  # what went wrong on the way, "" if nothing


_lock = threading.Lock()
_kernels: _Kernels | None = None
_reasons: dict[str, str | None] = {}  # device type -> why there is no kernel for it (None: there is one)


def compiled_adaptive_conv(device_type: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """Return the compiled, differentiable adaptive conv for `device_type` ("cpu", "cuda"), or None.

    The callable takes x_padded (B, C, H+d-1, W+d-1) and filters (B, H, W, d, d) of one dtype on one device
    and returns (B, C, H, W). The first call may compile the kernels (about a minute on a CPU).
    """
    return _forward if compiled_unavailable_reason(device_type) is None else None


def compiled_unavailable_reason(device_type: str) -> str | None:
    """Why `compiled_adaptive_conv(device_type)` returns None, or None when it returns the kernel."""
    # A plain dict lookup once known, so that torch.compile traces callers without a graph break.
    if device_type not in _reasons:
        _reasons[device_type] = _find_reason(device_type)
    return _reasons[device_type]


def kernels_origin() -> str | None:
    """Where the kernels come from (installed module or JIT build folder), loading them; None if they cannot load."""
    return _load().origin


def _find_reason(device_type: str) -> str | None:
    kernels = _load()
    if kernels.origin is None:
        return kernels.problems
    key = {"cpu": torch._C.DispatchKey.CPU, "cuda": torch._C.DispatchKey.CUDA}.get(device_type)
    if key is None or not torch.ops.featup.adaptive_conv_forward.default.has_kernel_for_dispatch_key(key):
        missing = f"the featup kernels loaded from {kernels.origin} have no {device_type!r} kernel."
        return f"{missing} {kernels.problems}".strip()
    return None


def _forward(x_padded: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    return torch.ops.featup.adaptive_conv_forward.default(x_padded, filters)


def _load() -> _Kernels:
    global _kernels
    with _lock:
        if _kernels is None:
            _kernels = _load_once()
            if _kernels.origin is not None:
                _register_python_side()
        return _kernels


def _load_once() -> _Kernels:
    problems = []
    if importlib.util.find_spec(_AOT_MODULE) is not None:
        try:
            return _Kernels(origin=importlib.import_module(_AOT_MODULE).__file__, problems="")
        except Exception as exc:  # a build for another torch fails here with an undefined symbol
            problems.append(f"The installed {_AOT_MODULE} did not load: {exc}.")
    if not _BUILD_CONFIG.is_file():
        problems.append(
            f"No kernel sources at {_BUILD_CONFIG.parent} (featup is not a source checkout): install the "
            "ahead-of-time build with `pip install --no-build-isolation ./kernels` from a featup checkout."
        )
        return _Kernels(origin=None, problems=" ".join(problems))
    from torch.utils import cpp_extension

    variants = [False]
    if torch.cuda.is_available():
        if cpp_extension.CUDA_HOME is None:
            problems.append("No CUDA toolkit found (nvcc, CUDA_HOME): built the CPU kernels only.")
        else:
            variants.insert(0, True)
    for with_cuda in variants:
        try:
            return _Kernels(origin=_jit_build(with_cuda), problems=" ".join(problems))
        except Exception as exc:  # no compiler, no ninja, a compile error: all mean "fall back"
            message = f"{type(exc).__name__}: {exc}"[-_REASON_CHARS:]
            problems.append(f"The JIT build {'with' if with_cuda else 'without'} CUDA failed: {message}")
    return _Kernels(origin=None, problems=" ".join(problems))


def _jit_build(with_cuda: bool) -> str:
    from torch.utils import cpp_extension

    spec = importlib.util.spec_from_file_location("featup_kernels_build_config", _BUILD_CONFIG)
    config = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(config)
    # One folder per environment (torch install) and variant: builds of several virtualenvs, or with and
    # without CUDA, never overwrite each other nor load each other's stale library.
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()
    env_id = hashlib.sha1(str(Path(torch.__file__).parent).encode()).hexdigest()[:8]
    tag = f"py{sys.version_info.major}{sys.version_info.minor}_torch{torch.__version__}_{env_id}"
    build_dir = Path(root) / f"{config.NAME}_{tag}_{'cuda' if with_cuda else 'cpu'}"
    build_dir.mkdir(parents=True, exist_ok=True)
    built = (build_dir / f"{config.NAME}.so").is_file()
    if not built:  # the first use otherwise sits silent for a minute inside whatever called it
        print(f"featup: compiling featup kernels, once, ~1 min (into {build_dir}; later runs reuse them)",
              file=sys.stderr, flush=True)
    started = time.monotonic()
    with _environment_tools_on_path():
        cpp_extension.load(
            name=config.NAME,
            sources=config.sources(with_cuda),
            extra_cflags=config.CXX_FLAGS,
            extra_cuda_cflags=config.NVCC_FLAGS,
            extra_ldflags=config.LD_FLAGS,
            build_directory=str(build_dir),
            with_cuda=with_cuda,
            is_python_module=False,
        )
    if not built:
        print(f"featup: kernels compiled in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return str(build_dir)


@contextlib.contextmanager
def _environment_tools_on_path() -> Iterator[None]:
    """Put this interpreter's bin folder first on PATH while building, so that the virtualenv's ninja is the one
    torch runs even when the virtualenv is not activated (and a system ninja of another version, which would
    discard the build log and rebuild everything, is not)."""
    saved = os.environ.get("PATH", "")
    os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), saved])
    try:
        yield
    finally:
        os.environ["PATH"] = saved


def _register_python_side() -> None:
    torch.library.register_fake("featup::adaptive_conv_forward", _forward_fake)
    torch.library.register_fake("featup::adaptive_conv_backward", _backward_fake)
    torch.library.register_autograd("featup::adaptive_conv_forward", _backward, setup_context=_setup_context)
    # The one-gradient ops (CPU builds since they exist; an older installed build lacks them).
    for name, fake in (("adaptive_conv_filter_grad", _filter_grad_fake), ("adaptive_conv_input_grad", _input_grad_fake)):
        if hasattr(torch.ops.featup, name):
            torch.library.register_fake(f"featup::{name}", fake)


def _forward_fake(x_padded: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    torch._check(x_padded.dim() == 4 and filters.dim() == 5, lambda: "expected x_padded 4-D and filters 5-D")
    torch._check(x_padded.dtype == filters.dtype, lambda: "expected x_padded and filters of one dtype")
    batch, channels = x_padded.shape[:2]
    height, width = filters.shape[1:3]
    return x_padded.new_empty((batch, channels, height, width))


def _backward_fake(
    grad_out: torch.Tensor, x_padded: torch.Tensor, filters: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty_like(x_padded, memory_format=torch.contiguous_format), torch.empty_like(
        filters, memory_format=torch.contiguous_format
    )


def _filter_grad_fake(grad_out: torch.Tensor, x_padded: torch.Tensor) -> torch.Tensor:
    d = x_padded.shape[2] - grad_out.shape[2] + 1
    return grad_out.new_empty((grad_out.shape[0], grad_out.shape[2], grad_out.shape[3], d, d))


def _input_grad_fake(grad_out: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    d = filters.shape[-1]
    b, c, h, w = grad_out.shape
    return grad_out.new_empty((b, c, h + d - 1, w + d - 1))


def _setup_context(ctx: torch.autograd.function.FunctionCtx, inputs: tuple, output: torch.Tensor) -> None:
    ctx.save_for_backward(*inputs)


def _backward(ctx: torch.autograd.function.FunctionCtx, grad_out: torch.Tensor) -> tuple:
    x_padded, filters = ctx.saved_tensors
    grad_x, grad_filters = torch.ops.featup.adaptive_conv_backward.default(grad_out, x_padded, filters)
    return (
        grad_x if ctx.needs_input_grad[0] else None,
        grad_filters if ctx.needs_input_grad[1] else None,
    )
