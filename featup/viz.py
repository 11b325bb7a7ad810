"""PCA of feature maps to RGB, with one basis fitted jointly so maps shown side by side share colours."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from featup.io import write_bytes
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


def side_by_side(images: Sequence[torch.Tensor], size: int | tuple[int, int] = 224, gap: int = 4, *,
                 titles: Sequence[str] | None = None) -> torch.Tensor:
    """Resize 3×H×W images to ``size`` (nearest, so low-res cells stay visible) and join them horizontally.

    With ``titles`` (one per image) each tile gets its title, centred in a white band above it, so the
    picture says what each panel is (e.g. "image", "lowres 14×14", "jbu 224×224").
    """
    size = (size, size) if isinstance(size, int) else size
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"got {len(titles)} titles for {len(images)} images; give one title per image")
    tiles = [F.interpolate(img[None].float(), size=size, mode="nearest")[0] for img in images]
    spacer = torch.ones(3, size[0], gap)
    parts = [t for tile in tiles for t in (tile, spacer)][:-1]
    strip = torch.cat(parts, dim=2)
    if titles is None:
        return strip
    return torch.cat([_title_band(titles, size[1], gap), strip], dim=1)


def _font(size: int):
    """DejaVu Sans (shipped with matplotlib; it has "×"), else Pillow's own font."""
    from PIL import ImageFont

    try:
        from matplotlib import get_data_path

        return ImageFont.truetype(f"{get_data_path()}/fonts/ttf/DejaVuSans.ttf", size)
    except (ImportError, OSError):
        try:
            return ImageFont.load_default(size=size)  # scalable where Pillow has FreeType
        except (TypeError, OSError):
            return ImageFont.load_default()


def _title_band(titles: Sequence[str], tile_width: int, gap: int) -> torch.Tensor:
    """A white 3×h×W band with each title centred over its tile, shrunk (then cut with …) to fit the tile."""
    from PIL import Image, ImageDraw

    font_size = int(np.clip(tile_width // 14, 10, 20))
    height = font_size + 8
    width = len(titles) * tile_width + (len(titles) - 1) * gap
    band = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(band)
    for i, title in enumerate(titles):
        font, text = _font(font_size), str(title)
        for smaller in range(font_size - 1, 7, -1):  # shrink a long title before cutting it
            if draw.textlength(text, font=font) <= tile_width - 4:
                break
            font = _font(smaller)
        while len(text) > 1 and draw.textlength(text, font=font) > tile_width - 4:
            text = text[:-2] + "…"
        left = i * (tile_width + gap) + (tile_width - draw.textlength(text, font=font)) / 2
        draw.text((left, height / 2), text, fill="black", font=font, anchor="lm")
    return torch.from_numpy(np.asarray(band).copy()).permute(2, 0, 1).float() / 255


def save_png(image: torch.Tensor | np.ndarray, path_or_url: str, storage_options: Mapping | None = None) -> str:
    """Write a 3×H×W (0..1) tensor or H×W×3 uint8 array as a PNG to a local path or fsspec URL."""
    from PIL import Image

    if isinstance(image, torch.Tensor):
        image = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    write_bytes(path_or_url, buffer.getvalue(), storage_options, content_type="image/png")
    return path_or_url
