"""Neighbour products: ``⟨k(x+Δp), q(x)⟩`` for every tap of a d×d window, the range logits of a JBU layer.

``neighbour_products(queries, radius, keys=None)`` reflect-pads the B×C×H×W keys (default: the queries)
and returns B×d²×H×W (tap p = i·d + j). It is the filter gradient of the adaptive convolution with the queries as the output
gradient and their padded copy as the input, so the compiled kernels compute it (and its gradient: an
adaptive convolution for the queries and an input gradient for the keys) without ever holding the
B×C·d²×H×W products that the per-tap PyTorch loop writes and sums. Backends as for ``adaptive_conv``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from featup.ops.adaptive_conv import compiled_kernel

__all__ = ["neighbour_products"]


def neighbour_products(queries: torch.Tensor, radius: int, keys: torch.Tensor | None = None, *,
                       backend: str | None = None) -> torch.Tensor:
    """``out[b, i·d + j, y, x] = Σ_c q[b, c, y, x] · pad(k)[b, c, y + i, x + j]``, reflect padding by ``radius``.

    ``keys`` (default: the queries) has the queries' shape.
    """
    if queries.ndim != 4:
        raise ValueError(f"got queries of shape {tuple(queries.shape)}, expected B×C×H×W")
    if keys is not None and keys.shape != queries.shape:
        raise ValueError(f"got keys of shape {tuple(keys.shape)}, expected the queries' {tuple(queries.shape)}")
    if radius < 0 or min(queries.shape[-2:]) <= radius:
        raise ValueError(f"got radius {radius} for queries of size {tuple(queries.shape[-2:])}, expected "
                         "0 <= radius < both sides (reflect padding)")
    keys = F.pad(queries if keys is None else keys, [radius] * 4, mode="reflect")
    d = 2 * radius + 1
    if compiled_kernel(queries, d, backend) is not None:
        return _CompiledProducts.apply(queries, keys, d)
    height, width = queries.shape[-2:]
    return torch.stack(
        [(keys[:, :, i : i + height, j : j + width] * queries).sum(1) for i in range(d) for j in range(d)], dim=1
    )


def _single_gradient_ops(device: torch.device) -> bool:
    """Whether the loaded kernels have the one-gradient ops for this device (CPU builds; an older build may not)."""
    key = {"cpu": torch._C.DispatchKey.CPU, "cuda": torch._C.DispatchKey.CUDA}.get(device.type)
    return key is not None and all(
        hasattr(torch.ops.featup, name) and getattr(torch.ops.featup, name).default.has_kernel_for_dispatch_key(key)
        for name in ("adaptive_conv_filter_grad", "adaptive_conv_input_grad"))


class _CompiledProducts(torch.autograd.Function):
    """The products through featup's compiled adaptive-conv ops: the filter gradient of the queries against the keys.

    Where the kernels have the one-gradient ops each direction computes only what it needs; elsewhere the unused
    half of ``adaptive_conv_backward`` is computed and dropped.
    """

    @staticmethod
    def forward(ctx, queries: torch.Tensor, keys: torch.Tensor, d: int) -> torch.Tensor:
        b, _, h, w = queries.shape
        ctx.single = _single_gradient_ops(queries.device)
        if ctx.single:
            products = torch.ops.featup.adaptive_conv_filter_grad.default(queries, keys)
        else:
            unused = queries.new_zeros(b, h, w, d, d)
            _, products = torch.ops.featup.adaptive_conv_backward.default(queries, keys, unused)
        ctx.save_for_backward(queries, keys)
        return products.reshape(b, h, w, d * d).permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        queries, keys = ctx.saved_tensors
        b, p, h, w = grad.shape
        d = int(round(p**0.5))
        filters = grad.permute(0, 2, 3, 1).reshape(b, h, w, d, d).contiguous().to(queries.dtype)
        grad_queries = grad_keys = None
        if ctx.needs_input_grad[0]:
            grad_queries = torch.ops.featup.adaptive_conv_forward.default(keys, filters)
        if ctx.needs_input_grad[1] and ctx.single:
            grad_keys = torch.ops.featup.adaptive_conv_input_grad.default(queries, filters)
        elif ctx.needs_input_grad[1]:
            grad_keys, _ = torch.ops.featup.adaptive_conv_backward.default(queries, keys, filters)
        return grad_queries, grad_keys, None
