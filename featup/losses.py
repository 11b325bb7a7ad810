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
    "crf_loss",
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


def crf_loss(guidance: torch.Tensor, features: torch.Tensor, generator: torch.Generator, samples: int = 1000,
             *, alpha: float = 0.1, beta: float = 0.15, gamma: float = 0.005, w1: float = 10.0,
             w2: float = 3.0) -> torch.Tensor:
    """FeatUp's sampled dense-CRF smoothness: pixels close in place and colour should have close features.

    ``samples`` pixels are drawn per call (the same places in every image of the batch); for each pair with
    coordinates u in [0, 1) and guidance colours g, ``k = w1·exp(−‖Δu‖²/(2α) − ‖Δg‖²/(2β)) + w2·exp(−‖Δu‖²/(2γ))``
    and the loss is ``mean(k · ‖Δf‖²)``. ``guidance`` (B×g×H×W) and ``features`` (B×C×H×W) must be aligned:
    the published code paired jittered features with the unjittered image.
    """
    if guidance.shape[0] != features.shape[0] or guidance.shape[-2:] != features.shape[-2:]:
        raise ValueError(f"guidance {tuple(guidance.shape)} and features {tuple(features.shape)} must have the same "
                         "batch and size (pair each image with its own, aligned, features)")
    h, w = features.shape[-2:]
    ys = torch.randint(0, h, (samples,), generator=generator).to(features.device)
    xs = torch.randint(0, w, (samples,), generator=generator).to(features.device)
    coords = torch.stack([ys / h, xs / w]).to(features.dtype)
    coord_diff = (coords[:, :, None] - coords[:, None, :]).square().sum(0)[None]
    colours = guidance[:, :, ys, xs].to(features.dtype)
    colour_diff = (colours[..., None] - colours[..., None, :]).square().sum(1)
    kernel = w1 * torch.exp(-coord_diff / (2 * alpha) - colour_diff / (2 * beta)) + w2 * torch.exp(-coord_diff / (2 * gamma))
    picked = features[:, :, ys, xs]
    # ‖fi − fj‖² = ‖fi‖² + ‖fj‖² − 2⟨fi, fj⟩ as one batched matrix product: the direct B×C×N×N difference
    # tensor is 480 MB at the published batch and doubled a training step's time. Centring first keeps the
    # cancellation small.
    picked = picked - picked.mean(-1, keepdim=True)
    norms = picked.square().sum(1)
    feature_diff = (norms[:, :, None] + norms[:, None, :] - 2 * picked.transpose(1, 2) @ picked).clamp_min(0)
    return (feature_diff * kernel).mean()


def image_edge_weights(image: torch.Tensor, sigma: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights ``exp(-‖Δcolour‖² / (2σ²))`` of vertical (B×(H-1)×W×1) and horizontal (B×H×(W-1)×1) neighbours.

    Near 1 where a B×3×H×W image (0..1) is flat, near 0 across its edges: what ``edge_aware_smoothness``
    charges a feature change between those neighbours.
    """
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"expected a B×3×H×W image, got shape {tuple(image.shape)}")
    if sigma <= 0:
        raise ValueError(f"edge sigma must be positive, got {sigma}")
    dy = (image[:, :, 1:] - image[:, :, :-1]).square().sum(1)
    dx = (image[:, :, :, 1:] - image[:, :, :, :-1]).square().sum(1)
    return torch.exp(-dy / (2 * sigma**2))[..., None], torch.exp(-dx / (2 * sigma**2))[..., None]


def edge_aware_smoothness(features: torch.Tensor, weights: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Σ over images of the mean of weight · (Δfeature)² over neighbour pairs and channels (B×H×W×C, channels last).

    A total variation that is cheap across the image's edges (``image_edge_weights``) and dear inside
    flat regions: feature changes are pushed onto the image's edges.
    """
    wy, wx = weights
    dy = (features[:, 1:] - features[:, :-1]).square()
    dx = (features[:, :, 1:] - features[:, :, :-1]).square()
    per_image = (dy * wy).mean((1, 2, 3)) + (dx * wx).mean((1, 2, 3))
    return per_image.sum()
