"""Principal directions of feature pixels: the one eigen-decomposition behind the store's compression basis,
the implicit upsampler's PCA space and the colours of feature images."""

from __future__ import annotations

import torch

__all__ = ["principal_directions"]


def principal_directions(pixels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean (C,), top-k directions (k×C, orthonormal rows) and their share of the variance (k,) of M×C pixels.

    Computed in float64 from the C×C covariance with ``eigh``: exact and deterministic (no random sketch),
    and cheap for C up to a few thousand channels whatever M is. Results are float64.
    """
    if pixels.ndim != 2:
        raise ValueError(f"pixels must be M×C, got shape {tuple(pixels.shape)}")
    if not 1 <= k <= pixels.shape[1]:
        raise ValueError(f"k must lie in 1..{pixels.shape[1]} (the channel count), got {k}")
    x = pixels.double()
    mean = x.mean(0)
    centred = x - mean
    variance, vectors = torch.linalg.eigh(centred.T @ centred / max(x.shape[0] - 1, 1))
    variance, vectors = variance.flip(0), vectors.flip(1)  # eigh sorts ascending
    share = variance[:k] / variance.sum().clamp_min(1e-12)
    return mean, vectors[:, :k].T.contiguous(), share
