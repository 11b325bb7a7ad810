"""Benchmark sets that build offline and deterministically from a seed, as samples in the shard contract.

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

from __future__ import annotations

import colorsys
import functools
import gzip
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "DIGIT_CLASSES",
    "FASHION_CLASSES",
    "FASHION_MNIST_DIR",
    "depth_scenes",
    "fashion_mosaics",
    "load_items",
    "photo_crops",
]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ("background", "t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                   "sneaker", "bag", "ankle boot")
DIGIT_CLASSES = ("background",) + tuple(str(d) for d in range(10))
_SPLITS = {"train": 0, "test": 1}
_IDX_FILES = {"train": "train-{}-idx{}-ubyte.gz", "test": "t10k-{}-idx{}-ubyte.gz"}


def _check_split(split: str) -> None:
    if split not in _SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {sorted(_SPLITS)}")


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
    _check_split(split)
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


def _resize(array: np.ndarray, size: tuple[int, int], resample: int) -> np.ndarray:
    """Resize an H×W or H×W×3 uint8 array to (height, width) with PIL."""
    return np.asarray(Image.fromarray(array).resize((size[1], size[0]), resample))


@functools.lru_cache(maxsize=1)
def _textures() -> tuple[np.ndarray, ...]:
    """Real greyscale textures (0..1) that ship with scikit-image: brick, gravel, grass."""
    import skimage.data

    return tuple(getattr(skimage.data, n)().astype(np.float32) / 255 for n in ("brick", "gravel", "grass"))


def _random_colour(rng: np.random.Generator, saturation: tuple[float, float],
                   value: tuple[float, float]) -> np.ndarray:
    """An RGB colour in 0..1 from a uniformly random hue and the given saturation/value ranges."""
    return np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(*saturation), rng.uniform(*value)))


def _canvas(rng: np.random.Generator, size: int) -> np.ndarray:
    """A size×size×3 background (0..1): a tinted crop of a real texture over a two-colour gradient."""
    texture = _textures()[rng.integers(len(_textures()))]
    scale = rng.uniform(0.5, 1.0)
    side = int(min(texture.shape) * scale)
    y, x = rng.integers(0, texture.shape[0] - side + 1), rng.integers(0, texture.shape[1] - side + 1)
    crop = _resize((texture[y:y + side, x:x + side] * 255).astype(np.uint8), (size, size), Image.BILINEAR)
    a, b = _random_colour(rng, (0.0, 0.4), (0.3, 0.9)), _random_colour(rng, (0.0, 0.4), (0.3, 0.9))
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
    _check_split(split)
    if item_size is None:
        item_size = (max(1, round(size * 3 / 14)), max(1, round(size * 3 / 7)))
    if n < 0 or size < 16 or not 0 < item_size[0] <= item_size[1] <= size:
        raise ValueError(f"need n ≥ 0, size ≥ 16 and 0 < item_size[0] ≤ item_size[1] ≤ size; got n={n}, "
                         f"size={size}, item_size={item_size}")
    items, classes, names, source = load_items(split, None if root is None else str(root))
    for i in range(n):
        rng = np.random.default_rng((seed, _SPLITS[split], i))
        image = _canvas(rng, size)
        label = np.zeros((size, size), dtype=np.uint8)
        placed = []
        for _ in range(rng.integers(items_per_image[0], items_per_image[1] + 1)):
            k = int(rng.integers(len(items)))
            side = int(rng.integers(item_size[0], item_size[1] + 1))
            grey = _resize(items[k], (side, side), Image.BILINEAR).astype(np.float32) / 255
            mask = grey > 0.1
            y, x = int(rng.integers(0, size - side + 1)), int(rng.integers(0, size - side + 1))
            colour = _random_colour(rng, (0.5, 1.0), (0.7, 1.0))
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


def _rotation_x(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _texture_lookup(texture: np.ndarray, u: np.ndarray, v: np.ndarray, scale: float) -> np.ndarray:
    """Tile a texture over surface coordinates (u, v in metres, ≥ 0) at ``scale`` texels per metre."""
    h, w = texture.shape
    return texture[(v * scale).astype(np.int64) % h, (u * scale).astype(np.int64) % w]


def _surface(rng: np.random.Generator) -> tuple[np.ndarray, float, np.ndarray]:
    """A random surface: a real texture from scikit-image or a checkerboard, texels per metre, and a tint."""
    if rng.uniform() < 0.3:
        cells = int(rng.integers(2, 5))
        board = (np.indices((64, 64)) // (64 // cells)).sum(0) % 2
        pattern, scale = (0.45 + 0.55 * board).astype(np.float32), float(rng.uniform(40, 120))
    else:
        pattern, scale = _textures()[rng.integers(len(_textures()))], float(rng.uniform(100, 300))
    return pattern, scale, _random_colour(rng, (0.2, 0.9), (0.5, 1.0))


class _ZBuffer:
    """Keeps, per ray, the nearest surface hit so far: its distance and its shaded colour."""

    def __init__(self, origin: np.ndarray, rays: np.ndarray):
        self.origin, self.rays = origin, rays
        self.depth = np.full(rays.shape[:2], np.inf)
        self.colour = np.zeros(rays.shape)
        light = np.array([-0.4, 0.8, -0.45])
        self.light = light / np.linalg.norm(light)

    def points(self, t: np.ndarray) -> np.ndarray:
        """Hit points at distance ``t`` (the ray origin where t is inf: no hit)."""
        return self.origin + np.where(np.isfinite(t), t, 0)[..., None] * self.rays

    def add(self, t: np.ndarray, normal: np.ndarray, albedo: np.ndarray) -> None:
        """Composite a surface (hit distance, inf on a miss) with ambient + Lambertian shading."""
        nearer = t < self.depth
        self.depth[nearer] = t[nearer]
        lambert = np.clip((normal * self.light).sum(-1), 0, None)
        self.colour[nearer] = (albedo * (0.35 + 0.65 * lambert)[..., None])[nearer]


def depth_scenes(n: int, *, seed: int = 0, split: str = "train", size: int = 224,
                 objects: tuple[int, int] = (2, 5)) -> Iterator[dict]:
    """``n`` ray-cast scenes with exact planar depth (metres along the optical axis).

    A pinhole camera (60° field of view, 1.2–2 m high, pitched 8–25° down) sees a textured ground plane,
    a textured wall 10–25 m away and ``objects`` textured boxes and spheres standing on the ground, with
    Lambertian shading. Rendered at 2× and averaged down, so edges are anti-aliased in image and depth.
    """
    _check_split(split)
    if n < 0 or size < 16:
        raise ValueError(f"need n ≥ 0 and size ≥ 16, got n={n}, size={size}")
    render = 2 * size
    for i in range(n):
        rng = np.random.default_rng((seed, _SPLITS[split], 100 + i))
        height, pitch = rng.uniform(1.2, 2.0), np.deg2rad(rng.uniform(8, 25))
        focal = (render / 2) / np.tan(np.deg2rad(60.0) / 2)
        v, u = np.mgrid[0:render, 0:render] + 0.5
        # Camera frame: x right, y up, z forward; rays keep z = 1 so the hit distance t is planar depth.
        rays = np.stack([(u - render / 2) / focal, -(v - render / 2) / focal, np.ones_like(u)], -1)
        rays = rays @ _rotation_x(pitch).T  # pitch the camera down
        scene = _ZBuffer(np.array([0.0, height, 0.0]), rays)
        meta = {"camera": {"height": float(height), "pitch_deg": float(np.rad2deg(pitch)), "fov_deg": 60.0},
                "objects": []}

        pattern, scale, tint = _surface(rng)  # ground plane y = 0
        down = rays[..., 1] < 0
        t = np.where(down, -height / np.where(down, rays[..., 1], -1), np.inf)
        p = scene.points(t)
        albedo = tint * _texture_lookup(pattern, p[..., 0] + 1000, p[..., 2], scale)[..., None]
        scene.add(t, np.broadcast_to([0.0, 1.0, 0.0], rays.shape), albedo)

        wall = rng.uniform(10, 25)  # back wall z = wall; every ray reaches it (|pitch| + 30° < 90°)
        pattern, scale, tint = _surface(rng)
        t = wall / rays[..., 2]
        p = scene.points(t)
        albedo = tint * _texture_lookup(pattern, p[..., 0] + 1000, p[..., 1] + 1000, scale)[..., None]
        scene.add(t, np.broadcast_to([0.0, 0.0, -1.0], rays.shape), albedo)
        meta["wall_distance"] = float(wall)

        for _ in range(rng.integers(objects[0], objects[1] + 1)):
            pattern, scale, tint = _surface(rng)
            x, z = rng.uniform(-3.5, 3.5), rng.uniform(3.0, min(12.0, wall - 2))
            if rng.uniform() < 0.5:
                half = np.array([rng.uniform(0.25, 1.0), rng.uniform(0.25, 1.25), rng.uniform(0.25, 1.0)])
                centre = np.array([x, half[1], z])
                t, normal = _ray_box(scene.origin, rays, centre - half, centre + half)
                p = scene.points(t)
                across = p[..., 0] + p[..., 2]
                meta["objects"].append({"kind": "box", "centre": centre.tolist(), "half_size": half.tolist()})
            else:
                radius = rng.uniform(0.3, 1.2)
                centre = np.array([x, radius, z])
                t, normal = _ray_sphere(scene.origin, rays, centre, radius)
                p = scene.points(t)
                across = np.arctan2(p[..., 0] - centre[0], p[..., 2] - centre[2]) * radius
                meta["objects"].append({"kind": "sphere", "centre": centre.tolist(), "radius": float(radius)})
            albedo = tint * _texture_lookup(pattern, across + 1000, p[..., 1] + 1000, scale)[..., None]
            scene.add(t, normal, albedo)

        image = scene.colour.reshape(size, 2, size, 2, 3).mean((1, 3))
        depth = scene.depth.reshape(size, 2, size, 2).mean((1, 3)).astype(np.float32)
        yield {
            "__key__": f"scene-{split}-{seed}-{i:06d}",
            "image": np.round(np.clip(image, 0, 1) * 255).astype(np.uint8),
            "label": None,
            "depth": depth,
            "meta": {"set": "depth_scenes", "split": split, "seed": seed, "index": i, **meta},
        }


def _ray_box(origin: np.ndarray, rays: np.ndarray, low: np.ndarray,
             high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slab intersection with an axis-aligned box: hit distance (inf on a miss) and the face normal."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t0 = (low - origin) / rays
        t1 = (high - origin) / rays
    near = np.minimum(t0, t1)
    exit_ = np.maximum(t0, t1).min(-1)
    entry = near.max(-1)
    hit = (entry <= exit_) & (entry > 0)
    axis = near.argmax(-1)
    normal = np.zeros(rays.shape)
    np.put_along_axis(normal, axis[..., None], -np.sign(np.take_along_axis(rays, axis[..., None], -1)), -1)
    return np.where(hit, entry, np.inf), normal


def _ray_sphere(origin: np.ndarray, rays: np.ndarray, centre: np.ndarray,
                radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Nearest positive intersection with a sphere: hit distance (inf on a miss) and the surface normal."""
    oc = origin - centre
    a = (rays * rays).sum(-1)
    b = 2 * (rays * oc).sum(-1)
    c = (oc * oc).sum() - radius ** 2
    disc = b * b - 4 * a * c
    root = np.sqrt(np.clip(disc, 0, None))
    t = (-b - root) / (2 * a)
    hit = (disc >= 0) & (t > 0)
    t = np.where(hit, t, np.inf)
    normal = (origin + np.where(hit, t, 0)[..., None] * rays - centre) / radius
    return t, normal


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
                "image": _resize(np.ascontiguousarray(crop), (size, size), Image.LANCZOS),
                "label": None,
                "depth": None,
                "meta": {"set": "photo_crops", "photo": name, "seed": seed, "index": j,
                         "crop": [y, x, y + side, x + side], "flipped": flip},
            }
