"""Class activation maps from a backbone's classifier head on (upsampled) features, and their faithfulness."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from featup.eval.features import Upsample, backbone_features, upsampled
from featup.eval.metrics import average_drop, average_increase
from featup.eval.probe import resize_map

__all__ = ["CamOutcome", "class_scores", "evaluate_cams", "explain", "normalize_cam"]


@dataclass(frozen=True)
class CamOutcome:
    """One image's normalised CAM (H×W, 0..1, at the image's size), its class and the scores Y and O."""

    cam: torch.Tensor
    class_index: int
    y: float  # softmax probability of the class on the image
    o: float  # the same on the image multiplied by the CAM


def normalize_cam(cam: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each B×H×W map to 0..1 (a flat map becomes all ones: it masks nothing)."""
    flat = cam.flatten(1)
    low = flat.min(1).values.view(-1, 1, 1)
    span = (flat.max(1).values.view(-1, 1, 1) - low)
    return torch.where(span > 0, (cam - low) / span.clamp_min(1e-12), torch.ones_like(cam))


@torch.no_grad()
def class_scores(backbone: nn.Module, image01: torch.Tensor) -> torch.Tensor:
    """B×K softmax class probabilities of 0..1 images under the backbone's classifier head."""
    return backbone.class_logits(backbone_features(backbone, image01)).softmax(-1)


def explain(
    backbone: nn.Module,
    image01: torch.Tensor,
    upsample: Upsample | None = None,
    *,
    features: torch.Tensor | None = None,
    class_index: int | None = None,
    output_size: tuple[int, int] | None = None,
    resize_mode: str = "nearest",
) -> CamOutcome:
    """The CAM of one 1×3×H×W image from ``upsample``-ed features, and the class score with and without it.

    The class defaults to the backbone's prediction; ``features`` (the backbone's low-res map of this
    image) may be passed to save a forward pass. The CAM is computed on the upsampled grid, min-max
    normalised, resized to the image with ``resize_mode`` and multiplied into the image.
    """
    if image01.ndim != 4 or image01.shape[:2] != (1, 3):
        raise ValueError(f"expected one 1×3×H×W image in 0..1, got shape {tuple(image01.shape)}")
    if features is None:
        features = backbone_features(backbone, image01)
    with torch.no_grad():
        probs = backbone.class_logits(features).softmax(-1)[0]
    index = int(probs.argmax()) if class_index is None else int(class_index)
    dense = upsampled(features, image01, upsample, output_size)
    with torch.no_grad():
        cam = normalize_cam(backbone.class_activation_map(dense, index))
        cam = resize_map(cam[None], tuple(image01.shape[-2:]), resize_mode)[0].clamp(0, 1)
        o = class_scores(backbone, image01 * cam[None])[0, index]
    return CamOutcome(cam=cam[0], class_index=index, y=float(probs[index]), o=float(o))


def evaluate_cams(
    backbone: nn.Module,
    images: Iterable[torch.Tensor],
    upsample: Upsample | None = None,
    *,
    output_size: tuple[int, int] | None = None,
    resize_mode: str = "nearest",
) -> dict[str, float]:
    """Average Drop and Average Increase (both %) of the CAMs of ``images`` (each 1×3×H×W, 0..1)."""
    outcomes = [explain(backbone, image, upsample, output_size=output_size, resize_mode=resize_mode)
                for image in images]
    if not outcomes:
        raise ValueError("no images were given")
    y = torch.tensor([o.y for o in outcomes])
    o = torch.tensor([o.o for o in outcomes])
    return {"average_drop": average_drop(y, o), "average_increase": average_increase(y, o)}
