"""ImageNet-1k class names, offline (timm ships the synset list), so CAM captions can say what was seen."""

from __future__ import annotations

from functools import lru_cache

__all__ = ["imagenet_class_name", "imagenet_class_names"]


@lru_cache(maxsize=1)
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in classifier order, each its first synonym ("Egyptian cat", "tench")."""
    from timm.data import (
        ImageNetInfo,  # loaded late: timm is heavy, and `featup` has armed its import hook
    )

    info = ImageNetInfo("imagenet-1k")
    return tuple(info.index_to_description(i).split(",")[0].strip() for i in range(info.num_classes()))


def imagenet_class_name(index: int) -> str:
    """The name of ImageNet-1k class ``index`` (0..999); raises ValueError outside that range."""
    names = imagenet_class_names()
    if not 0 <= index < len(names):
        raise ValueError(f"ImageNet-1k class indices are 0..{len(names) - 1}, got {index}; "
                         "a classifier with other classes needs its own names (cam_class_names=...)")
    return names[index]
