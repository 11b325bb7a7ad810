"""ADE20K scene parsing (ADEChallengeData2016): 150 classes, annotation value 0 = "other" (ignored).

::

    <root>/images/<split>/ADE_<split>_XXXXXXXX.jpg        # split: training | validation
    <root>/annotations/<split>/ADE_<split>_XXXXXXXX.png   # 0 = other, 1..150 = classes

Stored labels are shifted to 0..149 with 0 → 255 (the usual ``reduce_zero_label``), so 255 is ignore.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator

import numpy as np

from featup.data.images import MIN_SIDE
from featup.data.layouts._registry import LayoutSource, register_layout
from featup.data.layouts._tree import SourceTree, key_for, read_labelled
from featup.data.samples import IGNORE_INDEX, BadSample, Sample
from featup.io import StorageOptions

# objectInfo150 order: annotation value k (1..150) is CLASSES[k - 1].
CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle",
    "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake",
    "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray",
    "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass",
    "clock", "flag",
)  # fmt: skip

_SPLITS = {"train": "training", "training": "training", "val": "validation", "validation": "validation"}


def _lookup() -> np.ndarray:
    """PNG value → stored label: 1..150 → 0..149, 0 and anything unknown → IGNORE_INDEX."""
    table = np.full(65536, IGNORE_INDEX, dtype=np.uint8)
    table[1 : len(CLASSES) + 1] = np.arange(len(CLASSES))
    return table


@register_layout("ade20k")
def ade20k(
    root: str,
    *,
    split: str = "training",
    depth_root: str | None = None,
    depth_scale: float = 1000.0,
    min_side: int = MIN_SIDE,
    storage_options: StorageOptions = None,
) -> LayoutSource:
    """ADE20K ``split`` (training/validation, or train/val) under ``root`` = ADEChallengeData2016.

    Key = image file stem. Depth maps, if any, are ``<depth_root>/<split>/<stem>.npy`` or ``.png``.
    """
    if split not in _SPLITS:
        raise ValueError(f"ADE20K split must be one of {sorted(_SPLITS)}, got {split!r}")
    split = _SPLITS[split]
    tree = SourceTree(root, storage_options)
    depth_tree = SourceTree(depth_root, storage_options) if depth_root else None
    images = tree.find(posixpath.join("images", split))
    table = _lookup()

    def samples() -> Iterator[Sample | BadSample]:
        for image_rel in images:
            stem = posixpath.splitext(posixpath.basename(image_rel))[0]
            label_rel = posixpath.join("annotations", split, stem + ".png")
            key, source = key_for(stem), posixpath.join(root, image_rel)
            read = read_labelled(tree, image_rel, label_rel, depth_tree, posixpath.join(split, stem), depth_scale,
                                 min_side)
            if isinstance(read, str):
                yield BadSample(key, source, read)
                continue
            meta = {"split": split, "file": image_rel, **({"conversions": read.notes} if read.notes else {})}
            yield {"__key__": key, "image": read.image, "label": table[read.label], "depth": read.depth, "meta": meta}

    return LayoutSource(samples(), list(CLASSES), {"layout": "ade20k", "split": split, "source": root})
