"""The learned baseline of the paper: resize the features, then refine them with a convolution."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from featup.upsamplers._inputs import check_features_and_image, resolve_output_size
from featup.upsamplers._registry import register_upsampler

__all__ = ["ResizeConv"]


class ResizeConv(nn.Module):
    """Bilinear resize followed by a learned k×k convolution residual: ``up + conv(up)``.

    The convolution starts at zero, so an untrained ResizeConv is exactly bilinear upsampling and
    training only ever learns a correction to it.
    """

    def __init__(self, dim: int, kernel_size: int = 3):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"got kernel_size={kernel_size}, expected a positive odd size (1, 3, 5, ...)")
        self.conv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, padding_mode="replicate")
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(
        self, features: torch.Tensor, image: torch.Tensor, output_size: int | Sequence[int] | None = None
    ) -> torch.Tensor:
        """B×C×h×w features → B×C×H_out×W_out (default: the image's size)."""
        check_features_and_image(features, image)
        if features.shape[1] != self.conv.in_channels:
            raise ValueError(
                f"got features with {features.shape[1]} channels, expected {self.conv.in_channels} (the dim this "
                "ResizeConv was built for)"
            )
        up = F.interpolate(features, size=resolve_output_size(output_size, image), mode="bilinear", align_corners=False)
        return up + self.conv(up)


@register_upsampler
def resize_conv(dim: int, kernel_size: int = 3) -> ResizeConv:
    """Bilinear resize plus a learned convolution residual over ``dim`` feature channels."""
    return ResizeConv(dim, kernel_size)
