"""The linear probe shared by the segmentation and depth evaluations, and the pixel sampling that feeds it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LinearProbe", "as_chw", "resize_map", "sample_pixels", "standardization"]


class LinearProbe(nn.Module):
    """Per-channel standardisation with frozen training statistics, then a 1×1 convolution (still linear)."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, out_channels: int):
        super().__init__()
        self.register_buffer("mean", mean.detach().float().reshape(1, -1, 1, 1).clone())
        self.register_buffer("std", std.detach().float().reshape(1, -1, 1, 1).clone())
        self.conv = nn.Conv2d(mean.numel(), out_channels, 1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    @property
    def in_channels(self) -> int:
        return self.mean.shape[1]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.ndim != 4 or features.shape[1] != self.in_channels:
            raise ValueError(f"expected B×{self.in_channels}×h×w features, got shape {tuple(features.shape)}; "
                             "a probe only applies to features of the backbone it was trained on")
        return self.conv((features.float() - self.mean) / self.std)

    def linear(self, pixels: torch.Tensor) -> torch.Tensor:
        """The probe on an N×C matrix of pixels (training runs on sampled pixels, not whole maps)."""
        weight = self.conv.weight.flatten(1)
        return ((pixels - self.mean.flatten()) / self.std.flatten()) @ weight.T + self.conv.bias


def as_chw(features: torch.Tensor) -> torch.Tensor:
    """Accept C×h×w or 1×C×h×w features of one image; return C×h×w."""
    if features.ndim == 4 and features.shape[0] == 1:
        features = features[0]
    if features.ndim != 3:
        raise ValueError(f"expected one image's C×h×w (or 1×C×h×w) features, got shape {tuple(features.shape)}")
    return features


def sample_pixels(features: torch.Tensor, valid: torch.Tensor, n: int,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``n`` random valid pixels of a C×h×w map: (n×C values, n flat indices into h×w)."""
    index = valid.reshape(-1).nonzero().squeeze(1)
    if index.numel() > n:
        index = index[torch.randperm(index.numel(), generator=generator)[:n]]
    return features.reshape(features.shape[0], -1)[:, index].T.float(), index


def standardization(pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of N×C pixels; constant channels get std 1 so they map to 0, not NaN."""
    mean = pixels.mean(0)
    std = pixels.std(0, unbiased=False)
    return mean, torch.where(std > 1e-6, std, torch.ones_like(std))


def resize_map(values: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Resize B×K×h×w predictions to ``size`` with ``mode`` "nearest" or "bilinear" (no-op at the same size)."""
    if tuple(values.shape[-2:]) == tuple(size):
        return values
    if mode == "nearest":
        return F.interpolate(values, size=size, mode="nearest-exact")
    if mode == "bilinear":
        return F.interpolate(values, size=size, mode="bilinear", align_corners=False)
    raise ValueError(f"unknown resize mode {mode!r}; use 'nearest' or 'bilinear'")
