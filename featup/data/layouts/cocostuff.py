"""COCO-Stuff 164k in the layout FeatUp and STEGO read, with the 182 fine → 27 coarse class mapping.

::

    <root>/images/<split>/<id>.jpg          # split: train2017 | val2017
    <root>/annotations/<split>/<id>.png     # stuffthingmaps: fine class id - 1 (0..181), 255 unlabeled
    <root>/curated/<split>/<list>.txt       # optional image-id lists (e.g. Coco164kFull_Stuff_Coarse.txt)

``cocostuff27`` (coarse=True) maps each fine class to one of 12 "things" and 15 "stuff" groups, the
mapping of STEGO / FeatUp ``Coco(coarse_labels=False)``; unlabeled and unknown values become 255.
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

# COCO-Stuff labels.txt ids 1..182 (value in the PNG = id - 1); 11 thing ids are unused by COCO.
FINE_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "street sign", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep",
    "cow", "elephant", "bear", "zebra", "giraffe", "hat", "backpack", "umbrella", "shoe", "eye glasses",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat",
    "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle", "plate", "wine glass", "cup", "fork",
    "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza",
    "donut", "cake", "chair", "couch", "potted plant", "bed", "mirror", "dining table", "window", "desk",
    "toilet", "door", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven",
    "toaster", "sink", "refrigerator", "blender", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush", "hair brush", "banner", "blanket", "branch", "bridge", "building-other", "bush",
    "cabinet", "cage", "cardboard", "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds",
    "counter", "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble",
    "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower", "fog", "food-other", "fruit",
    "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves", "light", "mat", "metal",
    "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper", "pavement", "pillow", "plant-other",
    "plastic", "platform", "playingfield", "railing", "railroad", "river", "road", "rock", "roof", "rug",
    "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow", "solid-other", "stairs", "stone",
    "straw", "structural-other", "table", "tent", "textile-other", "towel", "tree", "vegetable", "wall-brick",
    "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile", "wall-wood", "water-other",
    "waterdrops", "window-blind", "window-other", "wood",
)  # fmt: skip

COARSE_CLASSES = (
    "electronic-things", "appliance-things", "food-things", "furniture-things", "indoor-things",
    "kitchen-things", "accessory-things", "animal-things", "outdoor-things", "person-things", "sports-things",
    "vehicle-things", "ceiling-stuff", "floor-stuff", "food-stuff", "furniture-stuff", "rawmaterial-stuff",
    "textile-stuff", "wall-stuff", "window-stuff", "building-stuff", "ground-stuff", "plant-stuff", "sky-stuff",
    "solid-stuff", "structural-stuff", "water-stuff",
)  # fmt: skip

# FINE_TO_COARSE[fine] = coarse index, for fine = PNG value 0..181.
FINE_TO_COARSE = (
    9, 11, 11, 11, 11, 11, 11, 11, 11, 8, 8, 8, 8, 8, 8, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 6, 6, 6, 6, 6, 6, 6, 6, 10, 10, 10, 10, 10, 10, 10,
    10, 10, 10, 5, 5, 5, 5, 5, 5, 5, 5, 2, 2, 2, 2, 2, 2, 2, 2, 2,
    2, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 0, 0, 0, 0, 0, 0, 1, 1, 1,
    1, 1, 1, 4, 4, 4, 4, 4, 4, 4, 4, 17, 17, 22, 20, 20, 22, 15, 25, 16,
    13, 12, 12, 17, 17, 23, 15, 15, 17, 15, 21, 15, 25, 13, 13, 13, 13, 13, 22, 26,
    14, 14, 15, 22, 21, 21, 24, 20, 22, 15, 17, 16, 15, 22, 24, 21, 17, 25, 16, 21,
    17, 22, 16, 21, 21, 25, 21, 26, 21, 24, 20, 17, 14, 21, 26, 15, 23, 20, 21, 24,
    15, 24, 22, 25, 15, 20, 17, 17, 22, 14, 18, 18, 18, 18, 18, 18, 18, 26, 26, 19,
    19, 24,
)  # fmt: skip


def _lookup(coarse: bool) -> np.ndarray:
    """A 65536-entry table from PNG value to stored label: every unknown value → IGNORE_INDEX."""
    table = np.full(65536, IGNORE_INDEX, dtype=np.uint8)
    table[: len(FINE_CLASSES)] = FINE_TO_COARSE if coarse else np.arange(len(FINE_CLASSES))
    return table


@register_layout("cocostuff")
def cocostuff(
    root: str,
    *,
    split: str = "train2017",
    coarse: bool = True,
    image_list: str | None = None,
    depth_root: str | None = None,
    depth_scale: float = 1000.0,
    min_side: int = MIN_SIDE,
    storage_options: StorageOptions = None,
) -> LayoutSource:
    """COCO-Stuff ``split`` under ``root``: 27 coarse classes (``coarse``) or the 182 fine ones.

    ``image_list`` names a file in ``curated/<split>/`` listing the image ids to use (STEGO's
    ``Coco164kFull_Stuff_Coarse.txt``); without it every image of the split is used. Key = image id.
    Depth maps, if any, are ``<depth_root>/<split>/<id>.npy`` (metres) or ``.png`` (÷ ``depth_scale``).
    """
    tree = SourceTree(root, storage_options)
    depth_tree = SourceTree(depth_root, storage_options) if depth_root else None
    if image_list:
        listed = tree.read(posixpath.join("curated", split, image_list)).decode().split()
        stems = [s.strip() for s in listed if s.strip()]
    else:
        stems = [posixpath.splitext(posixpath.basename(r))[0] for r in tree.find(posixpath.join("images", split))]
    table = _lookup(coarse)

    def samples() -> Iterator[Sample | BadSample]:
        for stem in stems:
            image_rel = posixpath.join("images", split, stem + ".jpg")
            label_rel = posixpath.join("annotations", split, stem + ".png")
            key, source = key_for(stem), posixpath.join(root, image_rel)
            read = read_labelled(tree, image_rel, label_rel, depth_tree, posixpath.join(split, stem), depth_scale,
                                 min_side)
            if isinstance(read, str):
                yield BadSample(key, source, read)
                continue
            meta = {"split": split, "file": image_rel}
            if stem.isdigit():
                meta["image_id"] = int(stem)
            if read.notes:
                meta["conversions"] = read.notes
            yield {"__key__": key, "image": read.image, "label": table[read.label], "depth": read.depth, "meta": meta}

    classes = list(COARSE_CLASSES if coarse else FINE_CLASSES)
    meta = {"layout": "cocostuff", "split": split, "coarse": coarse, "source": root, "image_list": image_list}
    return LayoutSource(samples(), classes, meta)
