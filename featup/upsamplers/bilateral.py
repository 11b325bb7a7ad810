"""The classical joint bilateral upsampler (Kopf et al. 2007), untrained: the baseline that shows what learning adds.

Same stages as the JBU stack (``featup.upsamplers.jbu.stage_sizes``): bicubic upsampling to each stage's
size, then one 7×7 filter per pixel, ``softmax_taps(−‖Δrgb‖²/(2·σ_c²) − ‖Δoffset‖²/(2·σ_s²))``, with the
colours of the 0..1 image average-pooled to the stage and offsets in linspace(−1, 1). A JBU stack after
``init_bilateral`` computes exactly this; training should only improve on it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from featup.ops import adaptive_conv
from featup.upsamplers._inputs import check_features_and_image, resolve_output_size
from featup.upsamplers._registry import register_upsampler
from featup.upsamplers.jbu import guidance_at, spatial_logits, stage_sizes

__all__ = ["JointBilateral"]


class JointBilateral(nn.Module):
    """Parameter-free joint bilateral upsampling in ``num_layers`` stages to any output size."""

    def __init__(self, colour_sigma: float = 0.05, spatial_sigma: float = 0.35, num_layers: int = 4,
                 radius: int = 3):
        super().__init__()
        if colour_sigma <= 0 or spatial_sigma <= 0 or num_layers < 1 or radius < 1:
            raise ValueError(f"got colour_sigma={colour_sigma}, spatial_sigma={spatial_sigma}, num_layers={num_layers}, "
                             f"radius={radius}; expected positive sigmas, num_layers >= 1 and radius >= 1")
        self.colour_sigma = colour_sigma
        self.spatial_sigma = spatial_sigma
        self.num_layers = num_layers
        self.radius = radius

    def filters(self, colours: torch.Tensor) -> torch.Tensor:
        """Normalised bilateral filters B×d²×H×W (tap p = i·d + j) of a B×3×H×W image in 0..1."""
        h, w = colours.shape[-2:]
        r, d = self.radius, 2 * self.radius + 1
        padded = F.pad(colours, [r] * 4, mode="reflect")
        colour = torch.stack([(padded[:, :, i:i + h, j:j + w] - colours).square().sum(1)
                              for i in range(d) for j in range(d)], 1)
        spatial = spatial_logits(d, self.spatial_sigma, device=colours.device, dtype=colours.dtype)
        return F.softmax(-colour / (2 * self.colour_sigma**2) + spatial[:, None, None], dim=1)

    def forward(self, features: torch.Tensor, image: torch.Tensor,
                output_size: int | Sequence[int] | None = None) -> torch.Tensor:
        """B×C×h×w features guided by the B×3×H×W image in 0..1 → B×C×H_out×W_out (default: H×W)."""
        check_features_and_image(features, image)
        size = resolve_output_size(output_size, image)
        out, r, d = features, self.radius, 2 * self.radius + 1
        for stage in stage_sizes(features.shape[-2:], size, self.num_layers, r):
            kernel = self.filters(guidance_at(image.to(features.dtype), stage))
            hr = F.interpolate(out, size=stage, mode="bicubic", align_corners=False)
            per_pixel = kernel.permute(0, 2, 3, 1).reshape(kernel.shape[0], *stage, d, d)
            out = adaptive_conv(F.pad(hr, [r] * 4, mode="reflect"), per_pixel.contiguous())
        return out


@register_upsampler
def bilateral(dim: int | None = None, colour_sigma: float = 0.05, spatial_sigma: float = 0.35, num_layers: int = 4,
              radius: int = 3) -> JointBilateral:
    """The classical joint bilateral upsampler, untrained; ``dim`` is accepted for a uniform interface and unused."""
    return JointBilateral(colour_sigma, spatial_sigma, num_layers, radius)
