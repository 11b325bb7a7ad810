"""Checks of the arguments every upsampler's ``forward(features, image, output_size=None)`` takes."""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch


def check_features_and_image(features: torch.Tensor, image: torch.Tensor) -> None:
    """Raise ValueError unless features is B×C×h×w and image a B×3×H×W RGB image on the same device."""
    if features.dim() != 4:
        raise ValueError(f"got features of shape {tuple(features.shape)}, expected B×C×h×w")
    if image.dim() != 4 or image.shape[1] != 3:
        raise ValueError(f"got image of shape {tuple(image.shape)}, expected a B×3×H×W RGB image in 0..1")
    if image.shape[0] != features.shape[0]:
        raise ValueError(
            f"got {features.shape[0]} feature maps and {image.shape[0]} images, expected one image per feature map"
        )
    if image.device != features.device:
        raise ValueError(f"got features on {features.device} and image on {image.device}, expected one device")
    if not features.is_floating_point() or not image.is_floating_point():
        raise ValueError(
            f"got features of dtype {features.dtype} and image of dtype {image.dtype}, expected floating point "
            "(convert a uint8 image with image.float() / 255)"
        )


def resolve_output_size(output_size: int | Sequence[int] | None, image: torch.Tensor) -> tuple[int, int]:
    """(H_out, W_out) from an int, a pair, or None meaning the image's own size."""
    if output_size is None:
        return int(image.shape[-2]), int(image.shape[-1])
    size = (output_size, output_size) if not isinstance(output_size, Sequence) else tuple(output_size)
    try:
        size = tuple(operator.index(s) for s in size)  # accepts numpy and torch integers, not floats
    except TypeError:
        size = ()
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"got output_size={output_size!r}, expected a positive int or a pair (H_out, W_out)")
    return size
