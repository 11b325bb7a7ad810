"""`photo_crops`: crops of the real photos in `featup.photos`, for CAMs with a real ImageNet head."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from PIL import Image

from featup.data.offline._common import resize

__all__ = ["photo_crops"]


def photo_crops(crops_per_photo: int = 4, *, seed: int = 0, size: int = 224,
                names: list[str] | None = None) -> Iterator[dict]:
    """Square crops of the real offline photos (`featup.photos`), resized to ``size``; the first crop of each
    photo is its centred full-height square, the rest are random (side 55–100 %, random flip)."""
    from featup.photos import sample_photos

    if crops_per_photo < 1 or size < 16:
        raise ValueError(f"need crops_per_photo ≥ 1 and size ≥ 16, got {crops_per_photo} and {size}")
    for p, (name, photo) in enumerate(sample_photos(names).items()):
        h, w = photo.shape[:2]
        rng = np.random.default_rng((seed, p))
        for j in range(crops_per_photo):
            side = min(h, w) if j == 0 else int(min(h, w) * rng.uniform(0.55, 1.0))
            y = (h - side) // 2 if j == 0 else int(rng.integers(0, h - side + 1))
            x = (w - side) // 2 if j == 0 else int(rng.integers(0, w - side + 1))
            flip = j > 0 and bool(rng.integers(2))
            crop = photo[y:y + side, x:x + side]
            crop = crop[:, ::-1] if flip else crop
            yield {
                "__key__": f"photo-{name}-{seed}-{j:03d}",
                "image": resize(np.ascontiguousarray(crop), (size, size), Image.LANCZOS),
                "label": None,
                "depth": None,
                "meta": {"set": "photo_crops", "photo": name, "seed": seed, "index": j,
                         "crop": [y, x, y + side, x + side], "flipped": flip},
            }
