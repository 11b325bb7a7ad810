"""The parameter-free baseline: bilinear interpolation of the features to the output size."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from featup.upsamplers._inputs import check_features_and_image, resolve_output_size
from featup.upsamplers._registry import register_upsampler

__all__ = ["Bilinear"]


class Bilinear(nn.Module):
    """Bilinear upsampling (align_corners=False); ignores the image except for its size."""

    def forward(
        self, features: torch.Tensor, image: torch.Tensor, output_size: int | Sequence[int] | None = None
    ) -> torch.Tensor:
        """B×C×h×w features → B×C×H_out×W_out (default: the image's size)."""
        check_features_and_image(features, image)
        size = resolve_output_size(output_size, image)
        return F.interpolate(features, size=size, mode="bilinear", align_corners=False)


@register_upsampler
def bilinear(dim: int | None = None) -> Bilinear:
    """Bilinear interpolation; ``dim`` is accepted for a uniform interface and unused."""
    return Bilinear()
