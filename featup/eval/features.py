"""The features under evaluation: a backbone's low-res map, optionally passed through an upsampler."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Upsample", "backbone_features", "image_tensor", "upsampled"]

# Anything called as ``upsample(features B×C×h×w, image01 B×3×H×W, output_size) -> B×C×H'×W'``: every
# featup upsampler module, or a function (e.g. one that fits an implicit upsampler to the image first).
Upsample = Callable[[torch.Tensor, torch.Tensor, tuple[int, int]], torch.Tensor]


def image_tensor(image: object, size: int | tuple[int, int] | None = None) -> torch.Tensor:
    """H×W×3 uint8 array (or 3×H×W / 1×3×H×W float 0..1 tensor) -> 1×3×H×W float 0..1, optionally resized."""
    if isinstance(image, torch.Tensor):
        x = image.float()
        x = x[None] if x.ndim == 3 else x
    else:
        x = torch.tensor(np.asarray(image))  # a copy: offline and decoded arrays may be read-only
        if x.ndim != 3 or x.shape[2] != 3:
            raise ValueError(f"expected an H×W×3 RGB image, got shape {tuple(x.shape)}")
        x = x.permute(2, 0, 1)[None].float() / 255
    if x.ndim != 4 or x.shape[:2] != (1, 3):
        raise ValueError(f"expected one RGB image (1×3×H×W), got shape {tuple(x.shape)}")
    if size is not None:
        size = (size, size) if isinstance(size, int) else tuple(size)
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    return x


@torch.no_grad()
def backbone_features(backbone: nn.Module, image01: torch.Tensor) -> torch.Tensor:
    """The backbone's B×C×h×w features of 0..1 images (normalised the backbone's own way)."""
    return backbone(backbone.normalize(image01))


def upsampled(features: torch.Tensor, image01: torch.Tensor, upsample: Upsample | None,
              output_size: tuple[int, int] | None = None) -> torch.Tensor:
    """``upsample(features, image01, output_size)``, or the low-res features themselves when ``upsample`` is None."""
    if upsample is None:
        return features
    size = tuple(output_size) if output_size is not None else tuple(image01.shape[-2:])
    if isinstance(upsample, nn.Module):
        with torch.no_grad():
            out = upsample(features, image01, size)
    else:  # a function may fit something to this image first: it gets autograd even inside no_grad
        with torch.enable_grad():
            out = upsample(features, image01, size).detach()
    if out.ndim != 4 or out.shape[:2] != features.shape[:2]:
        raise ValueError(f"an upsampler returned shape {tuple(out.shape)} for features {tuple(features.shape)}; "
                         "it must keep batch and channels (B×C×H×W)")
    return out
