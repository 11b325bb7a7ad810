"""Frozen feature extractors over timm models, each carrying its own stride, width and input normalisation.

``load_backbone(name)`` is the one entry point, over a registry filled by ``@register_backbone`` in one
module per family (``vit``, ``resnet``, ``efficientnet``; timm's ``create_model`` pattern). Weights come
only from a local file, an fsspec URL, a state dict, ``$FEATUP_WEIGHTS_DIR/<name>.pth`` or a package
that ships them (``efficientnet_lite0``); nothing is ever fetched from a model hub at run time. A loaded
backbone names its weights portably (``weights``) and carries their sha256 (``weights_sha256``).
"""

from featup.backbones import efficientnet, resnet, vit  # noqa: F401  (their imports register the families)
from featup.backbones._builder import (
    Backbone,
    ChannelNorm,
    Normalize,
    load_backbone,
    resize_to_stride,
)
from featup.backbones._registry import (
    BACKBONES,
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    BackboneSpec,
    list_backbones,
    register_backbone,
)
from featup.backbones._weights import MissingWeightsError, read_state_dict

__all__ = [
    "BACKBONES",
    "CLIP_MEAN",
    "CLIP_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Backbone",
    "BackboneSpec",
    "ChannelNorm",
    "MissingWeightsError",
    "Normalize",
    "list_backbones",
    "load_backbone",
    "read_state_dict",
    "register_backbone",
    "resize_to_stride",
]
