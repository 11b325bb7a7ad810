"""Benchmark sets that build offline and deterministically from a seed, as samples in the shard contract.

One module per set (``mosaics``, ``scenes``, ``crops``); ``_common`` holds what they share.

COCO, ADE20K, NYUv2 and ImageNet cannot be downloaded where this project is tested, so the evaluation
runs on sets with exact answers built from what is installed:

- `fashion_mosaics`: real Fashion-MNIST pixels (Debian package ``dataset-fashion-mnist``), scaled so
  each item spans a few stride-16 cells, colourised and pasted on textured canvases; the label is the
  item's class (1..10) where its pixels are, 0 (background) elsewhere.
- `depth_scenes`: ray-cast scenes (a textured ground plane in perspective, a back wall, textured boxes
  and spheres) with their exact planar depth.
- `photo_crops`: crops of the real photos in `featup.photos`, for CAMs with a real ImageNet head.

Every sample is ``{"__key__", "image": H×W×3 uint8, "label": H×W uint8 (255 = ignore) or None,
"depth": H×W float32 or None, "meta": dict}``; sample ``i`` depends only on (seed, split, i).
"""

from featup.data.offline.crops import photo_crops
from featup.data.offline.mosaics import (
    DIGIT_CLASSES,
    FASHION_CLASSES,
    FASHION_MNIST_DIR,
    fashion_mosaics,
    load_items,
)
from featup.data.offline.scenes import depth_scenes

__all__ = [
    "DIGIT_CLASSES",
    "FASHION_CLASSES",
    "FASHION_MNIST_DIR",
    "depth_scenes",
    "fashion_mosaics",
    "load_items",
    "photo_crops",
]
