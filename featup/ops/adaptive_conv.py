"""Adaptive convolution: every output pixel has its own d×d filter, shared by all channels.

``adaptive_conv`` is the one entry point and a dispatch point. It uses the compiled kernel from
``kernels/`` when one is built for the input's device, and otherwise a pure-PyTorch
``torch.autograd.Function`` that loops over the d² taps with in-place fused multiply-adds on channel
blocks, so neither direction ever holds the B×C·d²×H×W unfold tensor (3.6 GiB at C=384, 224², fp32):
its memory is O(input + output). float16 and bfloat16 inputs accumulate in float32.

The backend comes from the ``backend`` argument or else the ``FEATUP_ADAPTIVE_CONV`` environment
variable: ``auto`` (default: compiled if available, else pure PyTorch with a one-time warning),
``compiled`` (error if unavailable) or ``torch`` (never touches the extension).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from types import ModuleType

import torch

__all__ = ["BACKEND_ENV_VAR", "BACKENDS", "COMPILED_WINDOWS", "adaptive_conv", "compiled_kernel"]

BACKEND_ENV_VAR = "FEATUP_ADAPTIVE_CONV"
BACKENDS = ("auto", "compiled", "torch")

# Elements of one channel block (4 MiB of float32): a block of input and output stays in cache across
# the d² taps; whole-tensor taps re-stream C×H×W per tap, which made the filter gradient many times slower.
_BLOCK_ELEMENTS = 1 << 20

# Window sizes the compiled kernels are instantiated for (kernels/csrc/adaptive_conv.h, dispatch_window).
COMPILED_WINDOWS = (1, 3, 5, 7, 9)

_BUILD_HINT = (
    "Build the kernels: `pip install ./kernels` from a featup checkout, or let the first call JIT-compile "
    "kernels/csrc (needs a C++ compiler and ninja; see kernels/README.md)"
)

_warned_devices: set[str] = set()


def adaptive_conv(
    x_padded: torch.Tensor, filters: torch.Tensor, *, backend: str | None = None
) -> torch.Tensor:
    """Apply one d×d filter per output pixel to every channel: B×C×(H+d−1)×(W+d−1), B×H×W×d×d → B×C×H×W.

    ``out[b, c, y, x] = Σ_{i,j} filters[b, y, x, i, j] · x_padded[b, c, y + i, x + j]``, differentiable in
    both inputs. ``backend`` is ``"auto"``, ``"compiled"`` or ``"torch"``; None reads
    ``$FEATUP_ADAPTIVE_CONV`` (default ``auto``).
    """
    _check_inputs(x_padded, filters)
    kernel = compiled_kernel(x_padded, filters.shape[-1], backend)
    if kernel is not None:
        return kernel(x_padded, filters)
    return _AdaptiveConvFunction.apply(x_padded, filters)


def compiled_kernel(tensor: torch.Tensor, window: int, backend: str | None) -> Callable | None:
    """The compiled adaptive conv when it serves ``tensor``'s device and this window under ``backend``, else None.

    When it returns the kernel, ``torch.ops.featup``'s ops are loaded for that device too. None means: use the
    pure-PyTorch path; ``auto`` takes it where no kernel is built (warning once) or for a window the kernels are
    not instantiated for, ``compiled`` raises instead.
    """
    choice = _resolve_backend(backend)
    if choice == "torch":
        return None
    device_type = tensor.device.type
    kernel = _kernels().compiled_adaptive_conv(device_type)
    if kernel is not None and window in COMPILED_WINDOWS:
        return kernel
    if kernel is not None and choice == "auto":
        return None
    if choice == "compiled":
        reason = (f"the compiled kernels take windows d in {COMPILED_WINDOWS}, got d={window}" if kernel is not None
                  else _kernels().compiled_unavailable_reason(device_type))
        raise RuntimeError(
            f"got backend 'compiled', but no compiled adaptive-conv kernel is available for device '{device_type}' ({reason}). "
            f"{_BUILD_HINT}, or use backend='auto' / {BACKEND_ENV_VAR}=auto to fall back to pure PyTorch."
        )
    _warn_fallback(device_type)
    return None


def _resolve_backend(backend: str | None) -> str:
    if backend is not None:
        if backend not in BACKENDS:
            raise ValueError(f"got backend={backend!r}, expected one of {', '.join(BACKENDS)}")
        return backend
    value = os.environ.get(BACKEND_ENV_VAR, "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(f"got {BACKEND_ENV_VAR}={value!r}, expected one of {', '.join(BACKENDS)}; fix or unset it")
    return value


def _kernels() -> ModuleType:
    # Imported on first dispatch so that importing featup.ops never loads, let alone builds, the extension.
    from featup.ops import _extension

    return _extension


def _warn_fallback(device_type: str) -> None:
    if device_type in _warned_devices:
        return
    _warned_devices.add(device_type)
    warnings.warn(
        f"no compiled adaptive-conv kernel for device '{device_type}' "
        f"({_kernels().compiled_unavailable_reason(device_type)}); using the pure-PyTorch path, which is correct "
        f"but slower. {_BUILD_HINT} to speed it up, or set {BACKEND_ENV_VAR}=torch to silence this warning.",
        RuntimeWarning,
        stacklevel=3,
    )


def _check_inputs(x_padded: torch.Tensor, filters: torch.Tensor) -> None:
    if not isinstance(x_padded, torch.Tensor) or not isinstance(filters, torch.Tensor):
        raise TypeError(
            f"got x_padded of type {type(x_padded).__name__} and filters of type {type(filters).__name__}, "
            "expected two torch.Tensor"
        )
    if x_padded.dim() != 4:
        raise ValueError(
            f"got x_padded of shape {tuple(x_padded.shape)}, expected 4 dimensions B×C×(H+d−1)×(W+d−1)"
        )
    if filters.dim() != 5:
        raise ValueError(f"got filters of shape {tuple(filters.shape)}, expected 5 dimensions B×H×W×d×d")
    batch, height, width, d_rows, d_cols = filters.shape
    if d_rows != d_cols or d_rows % 2 == 0:
        raise ValueError(
            f"got filters of shape {tuple(filters.shape)} with {d_rows}×{d_cols} taps, expected square taps "
            "d×d with d odd"
        )
    expected = (batch, x_padded.shape[1], height + d_rows - 1, width + d_rows - 1)
    if tuple(x_padded.shape) != expected:
        raise ValueError(
            f"got x_padded of shape {tuple(x_padded.shape)} for filters of shape {tuple(filters.shape)}, "
            f"expected {expected} (the same batch, and H+d−1 × W+d−1: pad the input by (d−1)/2 on every side)"
        )
    if not x_padded.is_floating_point() or x_padded.dtype != filters.dtype:
        raise ValueError(
            f"got x_padded of dtype {x_padded.dtype} and filters of dtype {filters.dtype}, expected one "
            "floating-point dtype for both"
        )
    if x_padded.device != filters.device:
        raise ValueError(
            f"got x_padded on {x_padded.device} and filters on {filters.device}, expected both on one device"
        )


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _taps(d: int) -> Iterator[tuple[int, int, int]]:
    for p in range(d * d):
        yield p, p // d, p % d


def _channel_blocks(channels: int, height: int, width: int) -> Iterator[slice]:
    size = max(1, _BLOCK_ELEMENTS // max(1, height * width))
    for start in range(0, channels, size):
        yield slice(start, min(channels, start + size))


def _filters_by_tap(filters: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """B×H×W×d×d → contiguous B×d²×H×W, so that each tap's filter plane is one dense slice."""
    batch, height, width, d, _ = filters.shape
    return filters.to(dtype).reshape(batch, height, width, d * d).permute(0, 3, 1, 2).contiguous()


def _forward(x: torch.Tensor, k: torch.Tensor, d: int) -> torch.Tensor:
    batch, channels = x.shape[:2]
    height, width = k.shape[2:]
    out = x.new_zeros(batch, channels, height, width)
    for block in _channel_blocks(channels, height, width):
        out_block, x_block = out[:, block], x[:, block]
        for p, i, j in _taps(d):
            out_block.addcmul_(x_block[:, :, i : i + height, j : j + width], k[:, p : p + 1])
    return out


def _input_grad(grad: torch.Tensor, k: torch.Tensor, d: int) -> torch.Tensor:
    batch, channels, height, width = grad.shape
    dx = grad.new_zeros(batch, channels, height + d - 1, width + d - 1)
    for block in _channel_blocks(channels, height, width):
        dx_block, grad_block = dx[:, block], grad[:, block]
        for p, i, j in _taps(d):
            dx_block[:, :, i : i + height, j : j + width].addcmul_(grad_block, k[:, p : p + 1])
    return dx


def _filter_grad(grad: torch.Tensor, x: torch.Tensor, d: int) -> torch.Tensor:
    batch, channels, height, width = grad.shape
    dk = grad.new_zeros(batch, d * d, height, width)
    for block in _channel_blocks(channels, height, width):
        grad_block, x_block = grad[:, block], x[:, block]
        for p, i, j in _taps(d):
            dk[:, p] += (grad_block * x_block[:, :, i : i + height, j : j + width]).sum(1)
    return dk


class _AdaptiveConvFunction(torch.autograd.Function):
    """Pure-PyTorch adaptive conv; saves only its inputs, recomputes the accumulation-dtype copies."""

    @staticmethod
    def forward(ctx, x_padded: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x_padded, filters)
        acc = _accumulation_dtype(x_padded.dtype)
        d = filters.shape[-1]
        return _forward(x_padded.to(acc), _filters_by_tap(filters, acc), d).to(x_padded.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        x_padded, filters = ctx.saved_tensors
        acc = _accumulation_dtype(x_padded.dtype)
        batch, height, width, d, _ = filters.shape
        grad = grad_out.to(acc)
        grad_x = grad_k = None
        if ctx.needs_input_grad[0]:
            grad_x = _input_grad(grad, _filters_by_tap(filters, acc), d).to(x_padded.dtype)
        if ctx.needs_input_grad[1]:
            dk = _filter_grad(grad, x_padded.to(acc), d)
            grad_k = dk.permute(0, 2, 3, 1).reshape(batch, height, width, d, d).to(filters.dtype)
        return grad_x, grad_k
