"""Multi-view reconstruction loss with learned spatial uncertainty, and the regularisers of implicit fitting.

The reconstruction term is the Gaussian negative log-likelihood of the backbone's features of a view
given the downsampled, jittered high-res features, with a per-pixel scale ``s`` predicted from the
target: ``mean((pred - target)² / (2 s²) + log s)`` over batch, channels and pixels (the published
code's reduction). Targets and predictions are compared through a fresh random projection per view so
that the loss is cheap for wide backbones.
"""

from __future__ import annotations

import torch
from torch import nn

from featup.downsamplers import gaussian_blur

__all__ = [
    "UncertaintyScale",
    "blur_pin_loss",
    "gaussian_nll",
    "magnitude",
    "magnitude_loss",
    "project",
    "random_projection",
    "total_variation",
]


class UncertaintyScale(nn.Module):
    """Per-pixel scale ``s = max(exp(Conv1×1(C→1)(target) + 0.1), 1e-4)`` of the Gaussian likelihood."""

    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.Conv2d(dim, 1, 1)
        # Start near s = exp(0.1) everywhere so early steps are plain weighted MSE.
        with torch.no_grad():
            self.net.weight.mul_(0.1)
            self.net.bias.mul_(0.1)

    def forward(self, target: torch.Tensor) -> torch.Tensor:
        """Scale map B×1×h×w for B×C×h×w target features."""
        return torch.exp(self.net(target) + 0.1).clamp_min(1e-4)


def random_projection(batch: int, dim: int, out_dim: int = 30, *, generator: torch.Generator,
                      device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Gaussian projections B×dim×out_dim with unit-norm columns, one per view, drawn from ``generator``."""
    proj = torch.randn(batch, dim, out_dim, generator=generator, device=generator.device)
    proj = proj / proj.norm(dim=1, keepdim=True)
    return proj.to(device=device, dtype=dtype)


def project(features: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
    """Project B×C×H×W features with B×C×D projections to B×D×H×W."""
    if projection.shape[:2] != features.shape[:2]:
        raise ValueError(f"projection must be B×C×D with B×C = {tuple(features.shape[:2])}, "
                         f"got {tuple(projection.shape)}")
    return torch.einsum("bchw,bcd->bdhw", features, projection.to(features.dtype))


def gaussian_nll(prediction: torch.Tensor, target: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Mean of ``(prediction - target)² / (2 s²) + log s``; ``scale`` is B×1×h×w and broadcasts over channels."""
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape")
    return ((prediction - target).square() / (2 * scale.square()) + scale.log()).mean()


def magnitude(features: torch.Tensor) -> torch.Tensor:
    """Per-pixel L2 norm B×1×H×W over the channels."""
    return features.square().sum(1, keepdim=True).sqrt()


def magnitude_loss(predicted_magnitude: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error between a downsampled magnitude map (B×1×h×w) and the target features' magnitude."""
    return (predicted_magnitude - magnitude(target)).square().mean()


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Squared differences between vertical and horizontal neighbours, summed, over the number of elements."""
    return ((x[:, :, 1:] - x[:, :, :-1]).square().sum()
            + (x[:, :, :, 1:] - x[:, :, :, :-1]).square().sum()) / x.numel()


def blur_pin_loss(features: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between features and their 5×5 Gaussian blur (σ = 1): pins high frequencies down."""
    return (gaussian_blur(features) - features).square().mean()
