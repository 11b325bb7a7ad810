"""`depth_scenes`: ray-cast scenes (a textured ground plane in perspective, a back wall, textured boxes and
spheres) with their exact planar depth."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from featup.data.offline._common import SPLITS, check_split, random_colour, textures

__all__ = ["depth_scenes"]


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
        pattern, scale = textures()[rng.integers(len(textures()))], float(rng.uniform(100, 300))
    return pattern, scale, random_colour(rng, (0.2, 0.9), (0.5, 1.0))


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
    check_split(split)
    if n < 0 or size < 16:
        raise ValueError(f"need n ≥ 0 and size ≥ 16, got n={n}, size={size}")
    render = 2 * size
    for i in range(n):
        rng = np.random.default_rng((seed, SPLITS[split], 100 + i))
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
