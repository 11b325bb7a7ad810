"""PCA-k compression of feature channels: fit a basis once, store k coefficients per pixel."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from featup.pca import principal_directions
from featup.store.encoding import as_array


@dataclasses.dataclass(frozen=True)
class PCABasis:
    """``z = components · (f − mean)`` per pixel; ``f ≈ componentsᵀ · z + mean``."""

    mean: np.ndarray  # C
    components: np.ndarray  # k × C, orthonormal rows
    explained_variance_ratio: np.ndarray  # k

    @property
    def k(self) -> int:
        """Number of components."""
        return self.components.shape[0]

    @property
    def channels(self) -> int:
        """Channels of the features the basis was fitted on."""
        return self.components.shape[1]

    def project(self, features: Any) -> np.ndarray:
        """B×C×H×W features (tensor or array) → B×k×H×W float32 coefficients."""
        f = as_array(features).astype(np.float32, copy=False)
        return np.einsum("kc,bchw->bkhw", self.components, f - self.mean[None, :, None, None])

    def reconstruct(self, coefficients: np.ndarray) -> np.ndarray:
        """B×k×H×W coefficients → B×C×H×W float32 features."""
        z = np.asarray(coefficients, dtype=np.float32)
        return np.einsum("kc,bkhw->bchw", self.components, z) + self.mean[None, :, None, None]


def fit_pca(features: Any, k: int, *, max_pixels: int = 200_000, seed: int = 0) -> PCABasis:
    """Fit a k-component basis to B×C×H×W (or M×C) features, on at most ``max_pixels`` pixels drawn with ``seed``."""
    f = as_array(features)
    if f.ndim == 4:
        f = f.transpose(0, 2, 3, 1).reshape(-1, f.shape[1])
    if f.ndim != 2:
        raise ValueError(f"features must be B×C×H×W or M×C, got shape {f.shape}")
    if f.shape[0] > max_pixels:
        f = f[np.random.default_rng(seed).choice(f.shape[0], max_pixels, replace=False)]
    mean, components, share = principal_directions(torch.from_numpy(np.ascontiguousarray(f)), k)
    return PCABasis(
        mean=mean.numpy().astype(np.float32),
        components=np.ascontiguousarray(components.numpy(), dtype=np.float32),
        explained_variance_ratio=share.numpy().astype(np.float32),
    )
