"""The JBU layer's fused CPU kernels: padded bicubic upsampling, and the whole layer in one pass for inference.

``bicubic_pad(source, size, radius)`` is ``F.pad(F.interpolate(source, size, mode="bicubic",
align_corners=False), [radius] * 4, mode="reflect")``, differentiable; the compiled kernel does both in one
separable pass per channel plane (and its adjoint for the gradient) instead of ATen's 16-tap bicubic plus a copy.

``jbu_layer_forward`` is a ``featup.upsamplers.JBULayer`` after its range projection: per output row it forms the
d² range logits, the softmax with the spatial logits, the fixup MLP and the adaptive convolution without ever
holding the B×d²×H×W filters (whose passes through memory dominated the composed layer). It has no backward:
the layer takes it only when no gradient is wanted (``fused_layer_available``) and otherwise composes the same
maths from ``adaptive_conv``, ``neighbour_products`` and PyTorch ops.

Both run when the compiled CPU kernels are built and the data is float32 or float64 on the CPU; the backend
choice (``backend``, else ``$FEATUP_ADAPTIVE_CONV``) is ``adaptive_conv``'s, and ``torch`` never uses them.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from featup.ops.adaptive_conv import compiled_kernel

__all__ = ["bicubic_pad", "fused_layer_available", "jbu_layer_forward"]

_FUSED_DTYPES = (torch.float32, torch.float64)
_OPS = ("jbu_layer_forward", "bicubic_pad_forward", "bicubic_pad_backward")
_lock = threading.Lock()
_ready: bool | None = None  # whether the loaded kernels have the fused ops (an older installed build may not)


def _fused_ops_ready(tensor: torch.Tensor, window: int, backend: str | None) -> bool:
    """Whether the fused CPU ops serve ``tensor`` with this window under ``backend`` (registering them once)."""
    if tensor.device.type != "cpu" or tensor.dtype not in _FUSED_DTYPES:
        return False
    if compiled_kernel(tensor, window, backend) is None:
        return False
    global _ready
    with _lock:
        if _ready is None:
            _ready = all(hasattr(torch.ops.featup, name) for name in _OPS) and all(
                getattr(torch.ops.featup, name).default.has_kernel_for_dispatch_key(torch._C.DispatchKey.CPU)
                for name in _OPS)
            if _ready:
                _register_python_side()
        return _ready


def fused_layer_available(tensor: torch.Tensor, radius: int, backend: str | None = None) -> bool:
    """Whether ``jbu_layer_forward`` can run for this tensor's device and dtype and this radius."""
    return _fused_ops_ready(tensor, 2 * radius + 1, backend)


def bicubic_pad(source: torch.Tensor, size: Sequence[int], radius: int, *, backend: str | None = None) -> torch.Tensor:
    """Bicubic (align_corners=False) resize of B×C×h×w to ``size``, reflect-padded by ``radius``: B×C×(H+2r)×(W+2r)."""
    height, width = int(size[0]), int(size[1])
    if _fused_ops_ready(source, 2 * radius + 1, backend) and source.dim() == 4 and min(source.shape[-2:]) > 0:
        return torch.ops.featup.bicubic_pad_forward.default(source, height, width, radius)
    hr = F.interpolate(source, size=(height, width), mode="bicubic", align_corners=False)
    return F.pad(hr, [radius] * 4, mode="reflect")


def jbu_layer_forward(source_padded: torch.Tensor, queries: torch.Tensor, keys_padded: torch.Tensor,
                      guidance: torch.Tensor, spatial_logits: torch.Tensor, temperature: float, w1: torch.Tensor,
                      b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor, hidden_scale: torch.Tensor) -> torch.Tensor:
    """One JBU layer from its queries on: B×C×(H+d−1)×(W+d−1) padded source → B×C×H×W (no gradient).

    ``out[b,c,y,x] = Σ_p K[b,p,y,x] · source_padded[b,c,y+i,x+j]`` with ``S = softmax_p(τ·⟨queries[b,:,y,x],
    keys_padded[b,:,y+i,x+j]⟩ + spatial_logits[p])`` and ``K = S + 0.1·(w2·(hidden_scale[b] ⊙ GELU(w1·[S;
    guidance] + b1)) + b2)``. Shapes: queries B×Q×H×W, keys_padded B×Q×(H+d−1)×(W+d−1), guidance B×g×H×W,
    spatial_logits d², w1 d²×(d²+g), b1 and b2 d², w2 d²×d², hidden_scale B×d² (the Dropout2d mask, or ones).
    Call only where ``fused_layer_available``.
    """
    return torch.ops.featup.jbu_layer_forward.default(source_padded, queries, keys_padded, guidance, spatial_logits,
                                                      temperature, w1, b1, w2, b2, hidden_scale)


def _register_python_side() -> None:
    torch.library.register_fake("featup::jbu_layer_forward", _layer_fake)
    torch.library.register_fake("featup::bicubic_pad_forward", _bicubic_fake)
    torch.library.register_fake("featup::bicubic_pad_backward", _bicubic_backward_fake)
    torch.library.register_autograd("featup::bicubic_pad_forward", _bicubic_backward,
                                    setup_context=_bicubic_setup_context)


def _layer_fake(source_padded, queries, keys_padded, guidance, spatial_logits, temperature, w1, b1, w2, b2,
                hidden_scale):
    b, _, h, w = queries.shape
    return queries.new_empty((b, source_padded.shape[1], h, w))


def _bicubic_fake(source: torch.Tensor, height: int, width: int, pad: int) -> torch.Tensor:
    return source.new_empty((source.shape[0], source.shape[1], height + 2 * pad, width + 2 * pad))


def _bicubic_backward_fake(grad_out: torch.Tensor, source_height: int, source_width: int, pad: int) -> torch.Tensor:
    return grad_out.new_empty((grad_out.shape[0], grad_out.shape[1], source_height, source_width))


def _bicubic_setup_context(ctx, inputs: tuple, output: torch.Tensor) -> None:
    source, _, _, pad = inputs
    ctx.source_size = tuple(source.shape[-2:])
    ctx.pad = pad


def _bicubic_backward(ctx, grad_out: torch.Tensor) -> tuple:
    grad = torch.ops.featup.bicubic_pad_backward.default(grad_out, *ctx.source_size, ctx.pad)
    return grad, None, None, None
