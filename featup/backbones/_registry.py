"""What a registered backbone is (``BackboneSpec``) and the registry its family modules fill."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from featup._registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Weights that ship inside an installed package: () -> (state dict in timm's naming, portable name).
PackagedWeights = Callable[[], tuple[Mapping[str, torch.Tensor], str]]


@dataclass(frozen=True)
class BackboneSpec:
    """What a registered backbone is: the timm architecture, its taps and where real weights come from."""

    name: str
    arch: str
    taps: Mapping[str, int]  # tap name -> stride
    default_tap: str
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    weights_hint: str = ""
    create_kwargs: Mapping[str, object] = field(default_factory=dict)
    packaged_weights: PackagedWeights | None = None


BACKBONES: Registry[BackboneSpec] = Registry(
    "backbone", "any timm model name also works (see timm.list_models())")


def register_backbone(fn: Callable[[], BackboneSpec]) -> Callable[[], BackboneSpec]:
    """Decorator: register the spec returned by ``fn`` under its name."""
    spec = fn()
    BACKBONES.register(spec.name, spec, f"{fn.__module__}.{fn.__qualname__}")
    return fn


def list_backbones() -> list[str]:
    """Names accepted by `load_backbone` (any other timm model name works too, with a tap)."""
    return BACKBONES.names()
