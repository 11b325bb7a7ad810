"""Joint bilateral upsampling (JBU): FeatUp's feed-forward upsampler, a stack of learned image-guided layers.

``JBULayer`` is the published ``JBULearnedRange`` (same parameters, same state-dict layout, so published
checkpoints load 1:1): it upsamples the source bicubically to the guidance's size and filters it with
one d×d kernel per pixel, the product of a learned range kernel (a softmax over the taps of
``τ·⟨q(x+Δp), q(x)⟩`` with ``q`` a learned projection of the guidance) and a Gaussian spatial kernel,
normalised, plus a learned correction ``0.1·fixup_proj([K, G])``.

``JBUStack`` chains ``num_layers`` of them. The published stack doubles the grid at every layer (16× in
all), which misses the image size for most backbones (DINOv2-14 at 224 px gives 256 px). Ours reaches
any output size: stage k of n has size ``round(grid · (output / grid) ** (k / n))`` per axis and the last
stage is exactly the output size, so the scale grows geometrically. A 14×14 grid to 224 over 4 layers
gives the published 28, 56, 112, 224; a 16×16 grid (DINOv2-14) or a 7×7 one (stride-32 ResNet) lands on
224 as well, and each axis of a non-square output is handled on its own. Stages are never smaller than
radius + 1 pixels (reflect padding needs it). Stage k is guided by the ImageNet-normalised image (what
the published checkpoints expect) average-pooled to the stage size, or bilinearly resized where the
stage is larger than the image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from featup.backbones import IMAGENET_MEAN, IMAGENET_STD, Normalize
from featup.ops import adaptive_conv
from featup.upsamplers._inputs import check_features_and_image, resolve_output_size
from featup.upsamplers._registry import register_upsampler

__all__ = ["JBULayer", "JBUStack"]


class JBULayer(nn.Module):
    """One learned joint bilateral upsampling layer: source B×C×h×w, guidance B×g×H×W → B×C×H×W."""

    def __init__(self, guidance_dim: int = 3, key_dim: int = 32, radius: int = 3):
        super().__init__()
        if radius < 1:
            raise ValueError(f"got radius={radius}, expected at least 1")
        self.radius = radius
        self.diameter = 2 * radius + 1
        taps = self.diameter**2
        self.range_temp = nn.Parameter(torch.tensor(0.0))
        self.range_proj = nn.Sequential(
            nn.Conv2d(guidance_dim, key_dim, 1),
            nn.GELU(),
            nn.Dropout2d(0.1),
            nn.Conv2d(key_dim, key_dim, 1),
        )
        self.fixup_proj = nn.Sequential(
            nn.Conv2d(taps + guidance_dim, taps, 1),
            nn.GELU(),
            nn.Dropout2d(0.1),
            nn.Conv2d(taps, taps, 1),
        )
        self.sigma_spatial = nn.Parameter(torch.tensor(1.0))

    def range_kernel(self, guidance: torch.Tensor) -> torch.Tensor:
        """Softmax over the d² taps of the temperature-scaled key/query products: B×d²×H×W."""
        height, width = guidance.shape[-2:]
        d, r = self.diameter, self.radius
        queries = self.range_proj(guidance)
        keys = F.pad(queries, [r, r, r, r], mode="reflect")
        # One tap at a time: unfolding the keys would hold a B×key_dim·d²×H×W tensor.
        logits = torch.stack(
            [(keys[:, :, i : i + height, j : j + width] * queries).sum(1) for i in range(d) for j in range(d)],
            dim=1,
        )
        temperature = self.range_temp.exp().clamp(1e-4, 1e4)
        return F.softmax(temperature * logits, dim=1)

    def spatial_kernel(self) -> torch.Tensor:
        """Gaussian of the tap offsets over linspace(-1, 1, d) in both axes: 1×d²×1×1."""
        sigma = self.sigma_spatial
        offsets = torch.linspace(-1, 1, self.diameter, device=sigma.device, dtype=sigma.dtype)
        squared_distance = offsets[:, None].square() + offsets[None, :].square()
        return torch.exp(-squared_distance / (2 * sigma**2)).reshape(1, -1, 1, 1)

    def filters(self, guidance: torch.Tensor) -> torch.Tensor:
        """The per-pixel d×d filters this layer applies, tap p = i·d + j: B×d²×H×W (signed after the fixup)."""
        kernel = self.range_kernel(guidance) * self.spatial_kernel()
        kernel = kernel / kernel.sum(1, keepdim=True).clamp(1e-7)
        return kernel + 0.1 * self.fixup_proj(torch.cat([kernel, guidance], dim=1))

    def forward(self, source: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        """Upsample ``source`` to the guidance's size, filtered by kernels computed from ``guidance``."""
        batch, _, height, width = guidance.shape
        if source.shape[0] != batch:
            raise ValueError(f"got {source.shape[0]} sources and {batch} guidance images, expected the same batch")
        if min(height, width) <= self.radius:
            raise ValueError(
                f"got guidance of size {height}×{width}, expected both sides larger than the radius {self.radius}"
            )
        kernel = self.filters(guidance)
        hr_source = F.interpolate(source, size=(height, width), mode="bicubic", align_corners=False)
        r = self.radius
        hr_padded = F.pad(hr_source, [r, r, r, r], mode="reflect")
        per_pixel = kernel.permute(0, 2, 3, 1).reshape(batch, height, width, self.diameter, self.diameter)
        return adaptive_conv(hr_padded, per_pixel)


class JBUStack(nn.Module):
    """FeatUp's JBU upsampler: ``num_layers`` JBU layers reaching any output size, then a 1×1 residual fixup."""

    def __init__(self, dim: int, num_layers: int = 4, *, key_dim: int = 32, radius: int = 3):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"got num_layers={num_layers}, expected at least 1")
        self.dim = dim
        self.num_layers = num_layers
        self.radius = radius
        for k in range(1, num_layers + 1):
            self.add_module(f"up{k}", JBULayer(3, key_dim, radius))
        self.fixup_proj = nn.Sequential(nn.Dropout2d(0.2), nn.Conv2d(dim, dim, 1))
        self.normalize = Normalize(IMAGENET_MEAN, IMAGENET_STD)

    @property
    def layers(self) -> list[JBULayer]:
        """The JBU layers in the order they run (``up1`` first)."""
        return [getattr(self, f"up{k}") for k in range(1, self.num_layers + 1)]

    def stage_sizes(self, grid: Sequence[int], output_size: Sequence[int]) -> list[tuple[int, int]]:
        """Output size of each layer: geometric growth from ``grid`` to exactly ``output_size``."""
        if min(output_size) <= self.radius:
            raise ValueError(
                f"got output_size {tuple(output_size)}, expected both sides larger than the JBU radius {self.radius}"
            )
        n = self.num_layers
        sizes = [
            tuple(max(self.radius + 1, round(g * (o / g) ** (k / n))) for g, o in zip(grid, output_size, strict=True))
            for k in range(1, n)
        ]
        return [*sizes, (int(output_size[0]), int(output_size[1]))]

    def forward(
        self, features: torch.Tensor, image: torch.Tensor, output_size: int | Sequence[int] | None = None
    ) -> torch.Tensor:
        """B×dim×h×w features guided by the B×3×H×W image in 0..1 → B×dim×H_out×W_out (default: H×W)."""
        check_features_and_image(features, image)
        if features.shape[1] != self.dim:
            raise ValueError(
                f"got features with {features.shape[1]} channels, expected {self.dim} (the dim this JBUStack was "
                "built for)"
            )
        out = self._run_layers(features, image, output_size)
        return out + 0.1 * self.fixup_proj(out)

    def _run_layers(self, features: torch.Tensor, image: torch.Tensor,
                    output_size: int | Sequence[int] | None) -> torch.Tensor:
        size = resolve_output_size(output_size, image)
        guidance = self.normalize(image.to(features.dtype))
        out = features
        for layer, stage_size in zip(self.layers, self.stage_sizes(features.shape[-2:], size), strict=True):
            out = layer(out, _guidance_at(guidance, stage_size))
        return out

    def forward_projected(self, features: torch.Tensor, image: torch.Tensor, projection: torch.Tensor,
                          output_size: int | Sequence[int] | None = None) -> torch.Tensor:
        """``einsum("bchw,bcd->bdhw", forward(features, image), projection)`` with the layers run on D channels.

        The JBU layers treat every channel alike and linearly (bicubic resampling, then one adaptive filter
        per pixel from the image), so they commute with channel projections; the residual fixup folds into
        the projection, its Dropout2d mask included. So this is exact in train and eval mode, and costs D
        channels instead of ``dim``: a 1280-channel head trains through its 30-d loss projections.
        ``projection`` is B×dim×D.
        """
        check_features_and_image(features, image)
        b, dim = features.shape[:2]
        if projection.ndim != 3 or projection.shape[:2] != (b, self.dim) or dim != self.dim:
            raise ValueError(f"expected features with {self.dim} channels and a B×{self.dim}×D projection, got "
                             f"features {tuple(features.shape)} and projection {tuple(projection.shape)}")
        dropout, conv = self.fixup_proj
        weight = conv.weight[:, :, 0, 0].to(projection.dtype)
        folded = torch.einsum("oc,bod->bcd", weight, projection)  # Wᵀ·P: the fixup seen through P
        if dropout.training and dropout.p > 0:
            keep = torch.bernoulli(torch.full((b, dim, 1), 1 - dropout.p, device=features.device))
            folded = folded * keep.to(folded.dtype) / (1 - dropout.p)
        reduced = torch.einsum("bchw,bcd->bdhw", features, (projection + 0.1 * folded).to(features.dtype))
        out = self._run_layers(reduced, image, output_size)
        bias = torch.einsum("o,bod->bd", conv.bias.to(projection.dtype), projection)
        return out + 0.1 * bias[:, :, None, None].to(out.dtype)


def _guidance_at(guidance: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if size[0] <= guidance.shape[-2] and size[1] <= guidance.shape[-1]:
        return F.adaptive_avg_pool2d(guidance, size)
    return F.interpolate(guidance, size=size, mode="bilinear", align_corners=False, antialias=True)


@register_upsampler
def jbu(dim: int, num_layers: int = 4, key_dim: int = 32, radius: int = 3) -> JBUStack:
    """FeatUp's JBU stack over ``dim`` feature channels, reaching any output size in ``num_layers`` layers."""
    return JBUStack(dim, num_layers, key_dim=key_dim, radius=radius)
