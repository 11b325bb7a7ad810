"""PCA of feature maps to RGB, with one basis fitted jointly so maps shown side by side share colours."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from featup.pca import principal_directions

__all__ = ["PCABasis", "fit_pca", "pca_rgb", "save_png", "side_by_side"]


@dataclass(frozen=True)
class PCABasis:
    """A k-component projection of C-channel features plus the per-component range mapped to 0..1."""

    mean: torch.Tensor  # C
    components: torch.Tensor  # C×k
    low: torch.Tensor  # k
    high: torch.Tensor  # k

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """C×H×W features -> k×H×W values in 0..1."""
        c, h, w = features.shape
        flat = features.reshape(c, -1).T.float() - self.mean
        coords = (flat @ self.components - self.low) / (self.high - self.low).clamp_min(1e-8)
        return coords.clamp(0, 1).T.reshape(-1, h, w)


def _as_chw(features: torch.Tensor) -> torch.Tensor:
    if features.ndim == 4 and features.shape[0] == 1:
        features = features[0]
    if features.ndim != 3:
        raise ValueError(f"expected a C×H×W (or 1×C×H×W) feature map, got shape {tuple(features.shape)}")
    return features.detach().float().cpu()


def fit_pca(maps: Sequence[torch.Tensor], k: int = 3, *, max_samples: int = 50_000, seed: int = 0) -> PCABasis:
    """Fit one PCA basis on the pixels of all ``maps`` together (each C×H×W, same C, any size)."""
    maps = [_as_chw(m) for m in maps]
    channels = {m.shape[0] for m in maps}
    if len(channels) != 1:
        raise ValueError(f"maps shown together must have the same channel count, got {sorted(channels)}")
    generator = torch.Generator().manual_seed(seed)
    # Sample each map equally so a high-res map does not outvote its low-res counterpart.
    per_map = max(1, max_samples // len(maps))
    pixels = []
    for m in maps:
        flat = m.reshape(m.shape[0], -1).T
        if flat.shape[0] > per_map:
            flat = flat[torch.randperm(flat.shape[0], generator=generator)[:per_map]]
        pixels.append(flat)
    x = torch.cat(pixels)
    mean, directions, _ = principal_directions(x, k)
    mean, components = mean.float(), directions.T.float()
    # Fix each component's sign so colours do not flip between runs.
    components = components * torch.sign(components.sum(0, keepdim=True) + 1e-12)
    coords = (x - mean) @ components
    low, high = torch.quantile(coords, 0.01, dim=0), torch.quantile(coords, 0.99, dim=0)
    return PCABasis(mean, components, low, high)


def pca_rgb(maps: Sequence[torch.Tensor], *, basis: PCABasis | None = None, seed: int = 0) -> list[torch.Tensor]:
    """3×H×W RGB images (0..1) of ``maps`` under one jointly fitted (or given) PCA basis."""
    maps = [_as_chw(m) for m in maps]
    basis = basis or fit_pca(maps, 3, seed=seed)
    return [basis.project(m) for m in maps]


def side_by_side(images: Sequence[torch.Tensor], size: int | tuple[int, int] = 224, gap: int = 4) -> torch.Tensor:
    """Resize 3×H×W images to ``size`` (nearest, so low-res cells stay visible) and join them horizontally."""
    size = (size, size) if isinstance(size, int) else size
    tiles = [F.interpolate(img[None].float(), size=size, mode="nearest")[0] for img in images]
    spacer = torch.ones(3, size[0], gap)
    parts = [t for tile in tiles for t in (tile, spacer)][:-1]
    return torch.cat(parts, dim=2)


def save_png(image: torch.Tensor | np.ndarray, path_or_url: str, storage_options: Mapping | None = None) -> str:
    """Write a 3×H×W (0..1) tensor or H×W×3 uint8 array as a PNG to a local path or fsspec URL."""
    import fsspec
    from PIL import Image

    if isinstance(image, torch.Tensor):
        image = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    with fsspec.open(path_or_url, "wb", auto_mkdir=True, **(storage_options or {})) as f:
        f.write(buffer.getvalue())
    return path_or_url
