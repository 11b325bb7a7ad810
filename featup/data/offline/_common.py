"""What the offline sets share: their splits, resizing, real textures from scikit-image and random colours."""

from __future__ import annotations

import colorsys
import functools

import numpy as np
from PIL import Image

SPLITS = {"train": 0, "test": 1}
def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {sorted(SPLITS)}")


def resize(array: np.ndarray, size: tuple[int, int], resample: int) -> np.ndarray:
    """Resize an H×W or H×W×3 uint8 array to (height, width) with PIL."""
    return np.asarray(Image.fromarray(array).resize((size[1], size[0]), resample))


@functools.lru_cache(maxsize=1)
def textures() -> tuple[np.ndarray, ...]:
    """Real greyscale textures (0..1) that ship with scikit-image: brick, gravel, grass."""
    import skimage.data

    return tuple(getattr(skimage.data, n)().astype(np.float32) / 255 for n in ("brick", "gravel", "grass"))


def random_colour(rng: np.random.Generator, saturation: tuple[float, float],
                   value: tuple[float, float]) -> np.ndarray:
    """An RGB colour in 0..1 from a uniformly random hue and the given saturation/value ranges."""
    return np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(*saturation), rng.uniform(*value)))
