"""`fashion_mosaics`: real Fashion-MNIST items (Debian package ``dataset-fashion-mnist``) pasted on textured
canvases, with exact per-pixel labels (0 = background, 1..10 = the item's class)."""

from __future__ import annotations

import functools
import gzip
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from featup.data.offline._common import (
    SPLITS,
    check_split,
    random_colour,
    resize,
    textures,
)

__all__ = ["DIGIT_CLASSES", "FASHION_CLASSES", "FASHION_MNIST_DIR", "fashion_mosaics", "load_items"]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ("background", "t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                   "sneaker", "bag", "ankle boot")
DIGIT_CLASSES = ("background",) + tuple(str(d) for d in range(10))
_IDX_FILES = {"train": "train-{}-idx{}-ubyte.gz", "test": "t10k-{}-idx{}-ubyte.gz"}



def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format: magic, big-endian dims, uint8 data), gzipped or not."""
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file; is it corrupt?")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path} holds {body.size} bytes of data, its header says {shape}; is it truncated?")
    return body.reshape(shape)


@functools.lru_cache(maxsize=4)
def load_items(split: str = "train", root: str | None = None) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], str]:
    """Item images (N×28×28 uint8, 0 = empty), their classes (0..9), the class names (index 0 = background)
    and the source; Fashion-MNIST when installed, else scikit-learn's 8×8 digits with a warning."""
    check_split(split)
    folder = Path(root) if root is not None else FASHION_MNIST_DIR
    images = folder / _IDX_FILES[split].format("images", 3)
    labels = folder / _IDX_FILES[split].format("labels", 1)
    if images.is_file() and labels.is_file():
        return _read_idx(images), _read_idx(labels).astype(np.int64), FASHION_CLASSES, "fashion-mnist"
    warnings.warn(
        f"Fashion-MNIST not found in {folder} (expected {images.name} and {labels.name}); install it with "
        "`apt-get install dataset-fashion-mnist` or pass root=<folder with the IDX files>. Falling back to "
        "scikit-learn's 8×8 handwritten digits (load_digits).",
        stacklevel=2,
    )
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.round(digits.images * (255 / 16)).astype(np.uint8)
    cut = 1200  # a fixed train/test split of the 1797 digits
    part = slice(0, cut) if split == "train" else slice(cut, None)
    return pixels[part], digits.target[part].astype(np.int64), DIGIT_CLASSES, "sklearn-digits"


def _canvas(rng: np.random.Generator, size: int) -> np.ndarray:
    """A size×size×3 background (0..1): a tinted crop of a real texture over a two-colour gradient."""
    texture = textures()[rng.integers(len(textures()))]
    scale = rng.uniform(0.5, 1.0)
    side = int(min(texture.shape) * scale)
    y, x = rng.integers(0, texture.shape[0] - side + 1), rng.integers(0, texture.shape[1] - side + 1)
    crop = resize((texture[y:y + side, x:x + side] * 255).astype(np.uint8), (size, size), Image.BILINEAR)
    a, b = random_colour(rng, (0.0, 0.4), (0.3, 0.9)), random_colour(rng, (0.0, 0.4), (0.3, 0.9))
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    t = np.clip(0.5 + (np.cos(angle) * (xx - 0.5) + np.sin(angle) * (yy - 0.5)), 0, 1)[..., None]
    base = (1 - t) * a + t * b
    return base * (0.6 + 0.4 * crop[..., None] / 255)


def fashion_mosaics(
    n: int,
    *,
    seed: int = 0,
    split: str = "train",
    size: int = 224,
    items_per_image: tuple[int, int] = (3, 6),
    item_size: tuple[int, int] | None = None,
    root: str | None = None,
) -> Iterator[dict]:
    """``n`` mosaics of Fashion-MNIST items with exact per-pixel labels (0 = background, 1..10 = items).

    Items of the ``split`` (train or test items never mix) are scaled to ``item_size`` pixels (default
    3/14 to 3/7 of ``size``: 3–6 cells of a stride-16 backbone at 224 px), given a random colour that
    keeps their own shading, and pasted at random places; a later item covers an earlier one, and the
    label follows what is visible.
    """
    check_split(split)
    if item_size is None:
        item_size = (max(1, round(size * 3 / 14)), max(1, round(size * 3 / 7)))
    if n < 0 or size < 16 or not 0 < item_size[0] <= item_size[1] <= size:
        raise ValueError(f"need n ≥ 0, size ≥ 16 and 0 < item_size[0] ≤ item_size[1] ≤ size; got n={n}, "
                         f"size={size}, item_size={item_size}")
    items, classes, names, source = load_items(split, None if root is None else str(root))
    for i in range(n):
        rng = np.random.default_rng((seed, SPLITS[split], i))
        image = _canvas(rng, size)
        label = np.zeros((size, size), dtype=np.uint8)
        placed = []
        for _ in range(rng.integers(items_per_image[0], items_per_image[1] + 1)):
            k = int(rng.integers(len(items)))
            side = int(rng.integers(item_size[0], item_size[1] + 1))
            grey = resize(items[k], (side, side), Image.BILINEAR).astype(np.float32) / 255
            mask = grey > 0.1
            y, x = int(rng.integers(0, size - side + 1)), int(rng.integers(0, size - side + 1))
            colour = random_colour(rng, (0.5, 1.0), (0.7, 1.0))
            # Keep the item's own shading (its texture) under the new colour.
            paint = colour * (0.3 + 0.7 * grey[..., None])
            region = image[y:y + side, x:x + side]
            region[mask] = paint[mask]
            label[y:y + side, x:x + side][mask] = classes[k] + 1
            placed.append({"class": int(classes[k]) + 1, "item": k, "box": [y, x, y + side, x + side]})
        yield {
            "__key__": f"mosaic-{split}-{seed}-{i:06d}",
            "image": np.round(np.clip(image, 0, 1) * 255).astype(np.uint8),
            "label": label,
            "depth": None,
            "meta": {"set": "fashion_mosaics", "source": source, "split": split, "seed": seed, "index": i,
                     "class_names": list(names), "items": placed},
        }
