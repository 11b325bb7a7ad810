"""The offline benchmark sets (`featup.data.offline`) as ingest layouts, so they flow through shards and stores.

For these layouts the ``source`` argument of `featup.data.ingest` is not a dataset folder: it is
ignored (``"-"`` by convention), except for ``fashion_mosaics``, where a non-empty path other than
``"-"`` names a folder holding the Fashion-MNIST IDX files.
"""

from __future__ import annotations

from featup.data import offline
from featup.data.layouts._registry import LayoutSource, register_layout
from featup.io import StorageOptions


def _root(source: str) -> str | None:
    return None if source in ("", "-") else source


@register_layout("fashion_mosaics")
def fashion_mosaics(source: str = "-", *, n: int = 64, split: str = "train", seed: int = 0, size: int = 224,
                    storage_options: StorageOptions = None) -> LayoutSource:
    """Segmentation with real pixels and exact labels: Fashion-MNIST items on textured canvases."""
    names = offline.load_items(split, _root(source))[2]
    return LayoutSource(offline.fashion_mosaics(n, seed=seed, split=split, size=size, root=_root(source)),
                        list(names), {"set": "fashion_mosaics", "split": split, "seed": seed, "size": size})


@register_layout("depth_scenes")
def depth_scenes(source: str = "-", *, n: int = 32, split: str = "train", seed: int = 0, size: int = 224,
                 storage_options: StorageOptions = None) -> LayoutSource:
    """Depth with exact ground truth: ray-cast textured scenes."""
    return LayoutSource(offline.depth_scenes(n, seed=seed, split=split, size=size), None,
                        {"set": "depth_scenes", "split": split, "seed": seed, "size": size})


@register_layout("photos")
def photos(source: str = "-", *, crops_per_photo: int = 1, seed: int = 0, size: int = 224,
           storage_options: StorageOptions = None) -> LayoutSource:
    """The real photos that ship with installed packages (for CAMs and JBU training)."""
    return LayoutSource(offline.photo_crops(crops_per_photo, seed=seed, size=size), None,
                        {"set": "photos", "crops_per_photo": crops_per_photo, "seed": seed, "size": size})
