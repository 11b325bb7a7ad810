"""Is an upsampler sharp where the image is, and does it keep the backbone's meaning?

- ``edge_concentration``: how much of the features' gradient energy lies on given edges, relative to the
  share of edge pixels: 1 when the features change as much off the edges as on them (a blur knows no
  edges), ``1 / edge_fraction`` when they change only on them. The edges are the image's (``image_edges``,
  Canny) or, where labels exist, the true object boundaries (``label_boundaries``).
- ``pooled_cosine``: cosine between the high-res features average-pooled back onto the backbone's grid
  and the backbone's own features; 1 when the upsampler added detail without changing what the features
  say at the scale the backbone saw.
- ``contrast_kept``: the spatial spread of the pooled features over the backbone's, summed over channels
  (so dead, constant channels do not count); 1 when the upsampler kept the channels' contrast. A probe
  trained on the backbone's features reads shrunken ones as weak evidence, so a low value costs
  segmentation even at a high cosine (which ignores scale).

A sharp upsampler needs both: a high concentration alone can come from features that changed meaning.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["edge_concentration", "gradient_energy", "image_edges", "label_boundaries", "pooled_cosine"]


def gradient_energy(features: torch.Tensor) -> torch.Tensor:
    """B×H×W sum over channels of squared central differences, each channel scaled to unit spread first.

    Scaling makes every channel count alike, whatever its units; central differences put the energy of a
    step on the pixels on either side of it, where an edge detector marks it.
    """
    if features.ndim != 4:
        raise ValueError(f"expected features B×C×H×W, got shape {tuple(features.shape)}")
    x = features.float()
    x = x / x.flatten(2).std(-1).clamp_min(1e-8)[..., None, None]
    x = F.pad(x, [1, 1, 1, 1], mode="replicate")
    dy = (x[..., 2:, 1:-1] - x[..., :-2, 1:-1]) / 2
    dx = (x[..., 1:-1, 2:] - x[..., 1:-1, :-2]) / 2
    return (dy.square() + dx.square()).sum(1)


def edge_concentration(features: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Per image: (share of gradient energy on ``edges``) / (share of pixels that are edges); B values.

    ``features`` is B×C×H×W, ``edges`` a B×H×W boolean map of the same size. An image without edges or
    whose features do not change at all gets NaN: there is nothing to measure.
    """
    if edges.shape != (features.shape[0], *features.shape[-2:]) or edges.dtype != torch.bool:
        raise ValueError(f"expected a boolean edge map of shape {(features.shape[0], *features.shape[-2:])}, got "
                         f"{edges.dtype} {tuple(edges.shape)}")
    energy = gradient_energy(features).double()
    edges = edges.to(energy.device)
    on_edges = (energy * edges).flatten(1).sum(1) / energy.flatten(1).sum(1)
    fraction = edges.flatten(1).double().mean(1)
    return torch.where((fraction > 0) & on_edges.isfinite(), on_edges / fraction, torch.nan).float()


def image_edges(image: torch.Tensor, sigma: float = 2.0) -> torch.Tensor:
    """Canny edges (B×H×W bool) of a B×3×H×W image in 0..1, on its luminance, smoothed by ``sigma`` px."""
    from skimage.feature import canny

    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"expected a B×3×H×W image in 0..1, got shape {tuple(image.shape)}")
    gray = (image.double().cpu() * torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64)[:, None, None]).sum(1)
    return torch.from_numpy(np.stack([canny(g.numpy(), sigma=sigma) for g in gray]))


def label_boundaries(labels: torch.Tensor, ignore_index: int | None = None) -> torch.Tensor:
    """Pixels (B×H×W bool) with a 4-neighbour of another label: the two-pixel-wide outline of every object.

    Pixels next to ``ignore_index`` (unlabelled) do not count as boundaries.
    """
    if labels.ndim != 3:
        raise ValueError(f"expected labels B×H×W, got shape {tuple(labels.shape)}")
    lab = labels.long()
    edge = torch.zeros_like(lab, dtype=torch.bool)
    for a, b in ((lab[:, 1:], lab[:, :-1]), (lab[:, :, 1:], lab[:, :, :-1])):
        differs = a != b
        if ignore_index is not None:
            differs &= (a != ignore_index) & (b != ignore_index)
        if a.shape[1] != lab.shape[1]:
            edge[:, 1:] |= differs
            edge[:, :-1] |= differs
        else:
            edge[:, :, 1:] |= differs
            edge[:, :, :-1] |= differs
    return edge


def pooled_cosine(high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
    """Per image: mean cosine between B×C×H×W features average-pooled to ``low``'s grid and ``low``; B values."""
    if high.shape[:2] != low.shape[:2]:
        raise ValueError(f"high {tuple(high.shape)} and low {tuple(low.shape)} features differ in batch or channels")
    pooled = F.adaptive_avg_pool2d(high.float(), low.shape[-2:])
    return F.cosine_similarity(pooled, low.float(), dim=1).flatten(1).mean(1)


def contrast_kept(high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
    """Per image: Σ_c std(pooled high_c) / Σ_c std(low_c), spatial stds on ``low``'s grid; B values."""
    if high.shape[:2] != low.shape[:2]:
        raise ValueError(f"high {tuple(high.shape)} and low {tuple(low.shape)} features differ in batch or channels")
    pooled = F.adaptive_avg_pool2d(high.float(), low.shape[-2:]).flatten(2)
    return pooled.std(-1).sum(1) / low.float().flatten(2).std(-1).sum(1).clamp_min(1e-12)
