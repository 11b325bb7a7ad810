"""Learned downsamplers that model how a backbone pools high-resolution features onto its grid.

Both take high-res features B×C×H×W and a requested low-res grid (h, w) and return B×C×h×w. Window
``(y, x)`` covers input rows ``stride·y .. stride·y + kernel_size - 1`` (columns likewise), so the grid
needs an input of ``stride·(h-1) + kernel_size`` rows; an input of another size is first resampled
bilinearly to that span, which is how any image size and aspect ratio maps onto any grid. Nothing is
created on a fixed device, and nothing is random in eval mode.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AttentionDownsampler", "SimpleDownsampler", "gaussian_blur", "window_softmax"]


def gaussian_blur(x: torch.Tensor, kernel_size: int = 5, sigma: float = 1.0) -> torch.Tensor:
    """Blur each channel of a B×C×H×W map with a normalised Gaussian (reflect border), as two 1-D passes."""
    radius = kernel_size // 2
    kernel = _gaussian_taps(kernel_size, sigma, x)
    c = x.shape[1]
    x = F.pad(x, [radius] * 4, mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return F.conv2d(x, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)


def _gaussian_taps(kernel_size: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
    taps = torch.arange(kernel_size, device=like.device, dtype=like.dtype) - kernel_size // 2
    kernel = torch.exp(-taps.square() / (2 * sigma**2))
    return kernel / kernel.sum()


def _blurred_taps(attn: torch.Tensor, kernel_size: int = 5, sigma: float = 1.0) -> torch.Tensor:
    """Window weights B×h×w×k×k of blurred features as weights B×h×w×(k+K−1)² of the unblurred ones.

    A weighted sum of Gaussian-blurred values is a weighted sum of the raw values under the weights'
    full convolution with the (symmetric) Gaussian: blurring the k² weights of each window instead of
    every channel of the high-res features is exact and costs a small fraction of it.
    """
    b, h, w, k, _ = attn.shape
    g = _gaussian_taps(kernel_size, sigma, attn)
    out = F.conv2d(attn.reshape(b * h * w, 1, k, k), (g[:, None] * g[None, :])[None, None],
                   padding=kernel_size - 1)
    return out.view(b, h, w, k + kernel_size - 1, k + kernel_size - 1)


def _fit_span(x: torch.Tensor, output_size: tuple[int, int], kernel_size: int, stride: int,
              padding: int = 0) -> torch.Tensor:
    """Resample x so that an (h, w) grid of kernel_size windows at this stride tiles it (padded) exactly."""
    h, w = output_size
    if h < 1 or w < 1:
        raise ValueError(f"got output_size {output_size}; expected a positive (height, width)")
    span = (stride * (h - 1) + kernel_size - 2 * padding, stride * (w - 1) + kernel_size - 2 * padding)
    if tuple(x.shape[-2:]) == span:
        return x
    return F.interpolate(x, size=span, mode="bilinear", align_corners=False)


def _check(x: torch.Tensor) -> None:
    if x.ndim != 4:
        raise ValueError(f"expected high-res features B×C×H×W, got shape {tuple(x.shape)}")


class SimpleDownsampler(nn.Module):
    """One learned k×k kernel (|w| / Σ|w|), applied to every channel with a stride: a learned blur-and-subsample."""

    def __init__(self, kernel_size: int, stride: int):
        super().__init__()
        if kernel_size < 1 or stride < 1:
            raise ValueError(f"got kernel_size={kernel_size}, stride={stride}; both must be >= 1")
        self.kernel_size = kernel_size
        self.stride = stride
        self.weight = nn.Parameter(torch.ones(kernel_size, kernel_size))

    def kernel(self) -> torch.Tensor:
        """The normalised non-negative k×k kernel."""
        k = self.weight.abs()
        return k / k.sum().clamp_min(1e-12)

    def forward(self, features: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
        """Downsample B×C×H×W features to B×C×h×w."""
        _check(features)
        x = _fit_span(features, output_size, self.kernel_size, self.stride)
        b, c, hh, ww = x.shape
        kernel = self.kernel().to(x.dtype)[None, None]
        out = F.conv2d(x.reshape(b * c, 1, hh, ww), kernel, stride=self.stride)
        return out.reshape(b, c, *output_size)


def window_softmax(saliency: torch.Tensor, kernel_size: int, stride: int, output_size: tuple[int, int],
                   weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Softmax over each k×k window of B×1×H×W saliency of ``window · weight + bias``: B×h×w×k×k weights.

    ``weight`` and ``bias`` broadcast against the B×h×w×k² windows: k² values for one downsampler, or
    B×1×1×k² for one per image (a batch of implicit fits).
    """
    k, b = kernel_size, saliency.shape[0]
    h, w = output_size
    windows = F.unfold(saliency, k, stride=stride).view(b, k * k, h, w).permute(0, 2, 3, 1)
    scores = windows * weight + bias
    # The softmax runs in at least float32 so half-precision windows of 841 taps still sum to one.
    attn = torch.softmax(scores, dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32))
    return attn.to(saliency.dtype).view(b, h, w, k, k)


class AttentionDownsampler(nn.Module):
    """Softmax attention pooling over (possibly overlapping) k×k windows of blurred features.

    Per pixel a saliency logit ``Linear(C→1)`` (dropout 0.2 on its input while training) is scaled by a
    learned per-tap weight and shifted by a learned per-tap bias; the softmax over each window weights the
    blurred features. The windows are never unfolded with their channels: the weighted sum runs over
    stride×stride blocks, so memory stays at the size of the feature map even for overlapping windows.

    With ``padding`` the (blurred) features are reflect-padded first, so windows wider than the stride
    can be centred on the backbone's patches: kernel ``stride + 2·padding`` at the patch stride.

    Blur, resampling and jitter are linear and per channel, so the saliency logits can be taken before
    them: ``forward(values, size, saliency=s)`` pools any linear image of the features (a random
    projection of them, say) with the attention the full features would have had.
    """

    def __init__(self, dim: int, kernel_size: int, stride: int, dropout: float = 0.2, padding: int = 0):
        super().__init__()
        if kernel_size < 1 or stride < 1 or not 0 <= 2 * padding < kernel_size:
            raise ValueError(f"got kernel_size={kernel_size}, stride={stride}, padding={padding}; expected "
                             "kernel_size, stride >= 1 and 0 <= padding < kernel_size / 2")
        self.dim = dim
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.dropout = nn.Dropout(dropout)
        self.saliency = nn.Linear(dim, 1)
        self.w = nn.Parameter(torch.ones(kernel_size, kernel_size) + 0.01 * torch.randn(kernel_size, kernel_size))
        self.b = nn.Parameter(torch.zeros(kernel_size, kernel_size) + 0.01 * torch.randn(kernel_size, kernel_size))

    def saliency_logits(self, features: torch.Tensor) -> torch.Tensor:
        """Per-pixel saliency logit B×1×H×W of B×C×H×W features."""
        _check(features)
        if features.shape[1] != self.dim:
            raise ValueError(f"AttentionDownsampler was built for {self.dim} channels, got {features.shape[1]}")
        weight = self.saliency.weight[:, :, None, None].to(features.dtype)
        return F.conv2d(self.dropout(features), weight, self.saliency.bias.to(features.dtype))

    def attention(self, saliency: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
        """Softmax weights B×h×w×k×k of each window's taps, from a saliency map that already spans the windows."""
        return window_softmax(saliency, self.kernel_size, self.stride, output_size,
                              self.w.flatten().to(saliency.dtype), self.b.flatten().to(saliency.dtype))

    def forward(self, features: torch.Tensor, output_size: tuple[int, int],
                saliency: torch.Tensor | None = None) -> torch.Tensor:
        """Downsample B×C×H×W features to B×C×h×w; with ``saliency`` (B×1×H×W logits) C may be anything."""
        _check(features)
        if saliency is None:
            saliency = self.saliency_logits(features)
        elif saliency.shape != (features.shape[0], 1, *features.shape[-2:]):
            raise ValueError(f"saliency must be B×1×H×W = {(features.shape[0], 1, *features.shape[-2:])}, "
                             f"got {tuple(saliency.shape)}")
        k, s, pad = self.kernel_size, self.stride, self.padding
        features = _fit_span(features, output_size, k, s, pad)
        saliency = gaussian_blur(_fit_span(saliency.to(features.dtype), output_size, k, s, pad))
        if pad:
            saliency = F.pad(saliency, [pad] * 4, mode="reflect")
        # The windows pool blurred (and reflect-padded) features: the blur moves onto the window weights
        # (``_blurred_taps``), its reflected border onto the features' padding.
        attn = _blurred_taps(self.attention(saliency, output_size))
        r = pad + (attn.shape[-1] - k) // 2  # the blur's radius beyond the padding
        # The block-wise window sum wants whole stride×stride blocks; the same padding supplies the few extra
        # rows and columns (their weights are zero) unless the features are too small to reflect that far.
        m = math.ceil(attn.shape[-1] / s)
        extra_rows = (output_size[0] + m - 1) * s - features.shape[-2] - 2 * r
        extra_cols = (output_size[1] + m - 1) * s - features.shape[-1] - 2 * r
        if r + max(extra_rows, extra_cols) < min(features.shape[-2:]):
            values = F.pad(features, [r, r + extra_cols, r, r + extra_rows], mode="reflect")
        else:
            values = F.pad(features, [r] * 4, mode="reflect")
        return _window_sum(values, attn, s)


def _window_sum(x: torch.Tensor, attn: torch.Tensor, stride: int) -> torch.Tensor:
    """out[b,c,y,x] = Σ_ij attn[b,y,x,i,j] · x[b,c,stride·y+i,stride·x+j], as one batched matmul over blocks.

    The input is cut into stride×stride blocks; a window spans m×m of them (m = ceil(k / stride)), so the
    weights are laid out as m² single-channel "phase" maps over the block grid, every block meets all
    phases in one matmul, and each window adds up its m² phase results. Unlike unfolding, nothing of size
    C × k² × windows is ever held, and the backward pass is one matmul too.
    """
    b, c = x.shape[:2]
    _, h, w, k, _ = attn.shape
    s = stride
    m = math.ceil(k / s)
    # Taps beyond k (block padding) get zero weight; rows past the input are zero-padded.
    attn = F.pad(attn, [0, m * s - k, 0, m * s - k]).view(b, h, w, m, s, m, s)
    rows, cols = h + m - 1, w + m - 1
    if (x.shape[-2], x.shape[-1]) != (rows * s, cols * s):
        x = x[:, :, :rows * s, :cols * s]
        x = F.pad(x, [0, cols * s - x.shape[-1], 0, rows * s - x.shape[-2]])
    blocks = x.view(b, c, rows, s, cols, s)
    phases = torch.stack([F.pad(attn[:, :, :, dy, :, dx, :], [0, 0, 0, 0, dx, m - 1 - dx, dy, m - 1 - dy])
                          for dy in range(m) for dx in range(m)], 1)  # b × m² × rows × cols × s × s
    per_block = torch.einsum("bcyixj,bpyxij->bcpyx", blocks, phases)
    out = None
    for dy in range(m):
        for dx in range(m):
            term = per_block[:, :, dy * m + dx, dy:dy + h, dx:dx + w]
            out = term if out is None else out + term
    return out
