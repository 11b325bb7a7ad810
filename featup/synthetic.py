"""A synthetic task whose true high-resolution features are known: the proof that FeatUp training works.

Images are random shapes (ellipses, rectangles, triangles, some striped) over a colour gradient. The
"true" features are a fixed random two-layer per-pixel network over each pixel's colour and its 3×3
local mean, so they are sharp and aligned with the image's edges. ``SyntheticBackbone`` returns them
average-pooled by its stride — exactly what a patch backbone hands an upsampler — so an upsampler's
output can be scored against the truth at full resolution (``feature_metrics``).
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from featup.backbones import IMAGENET_MEAN, IMAGENET_STD, Normalize

__all__ = ["SyntheticBackbone", "compare_on_synthetic", "feature_metrics", "synthetic_images"]


def synthetic_images(count: int, size: int | tuple[int, int], *, seed: int, shapes: int = 8) -> torch.Tensor:
    """``count`` random-shape images, count×3×H×W in 0..1, fully determined by ``seed``."""
    height, width = (size, size) if isinstance(size, int) else size
    g = torch.Generator().manual_seed(seed)
    ys = torch.linspace(0, 1, height)[:, None].expand(height, width)
    xs = torch.linspace(0, 1, width)[None, :].expand(height, width)
    images = []
    for _ in range(count):
        c0, c1 = torch.rand(2, 3, 1, 1, generator=g)
        angle = float(torch.rand((), generator=g)) * 2 * math.pi
        ramp = (math.cos(angle) * xs + math.sin(angle) * ys + 1.5) / 3
        image = c0 * (1 - ramp) + c1 * ramp
        for _ in range(shapes):
            mask = _random_shape(ys, xs, g)
            color = torch.rand(3, 1, 1, generator=g)
            if float(torch.rand((), generator=g)) < 0.3:
                # Stripes with a period of 1/12..1/4 of the image: texture within a shape.
                other = torch.rand(3, 1, 1, generator=g)
                period = 1 / (4 + 8 * float(torch.rand((), generator=g)))
                theta = float(torch.rand((), generator=g)) * math.pi
                phase = (math.cos(theta) * xs + math.sin(theta) * ys) / period
                color = torch.where(torch.frac(phase) < 0.5, color, other)
            image = torch.where(mask, color, image)
        images.append(image)
    return torch.stack(images).clamp(0, 1)


def _random_shape(ys: torch.Tensor, xs: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    kind = int(torch.randint(0, 3, (), generator=g))
    cy, cx = torch.rand(2, generator=g).tolist()
    ry, rx = (0.06 + 0.22 * torch.rand(2, generator=g)).tolist()
    if kind == 0:
        return ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1
    if kind == 1:
        return ((ys - cy).abs() <= ry) & ((xs - cx).abs() <= rx)
    # A triangle: inside all three half-planes of its edges.
    corners = torch.tensor([cy, cx]) + (torch.rand(3, 2, generator=g) - 0.5) * 0.6
    inside = []
    for i in range(3):
        (y0, x0), (y1, x1) = corners[i].tolist(), corners[(i + 1) % 3].tolist()
        inside.append((x1 - x0) * (ys - y0) - (y1 - y0) * (xs - x0))
    signs = torch.stack(inside)
    return (signs >= 0).all(0) | (signs <= 0).all(0)


class SyntheticBackbone(nn.Module):
    """A "backbone" whose features are known at full resolution: ``forward`` average-pools them by ``stride``.

    Like every featup backbone it has ``normalize`` (ImageNet statistics), ``stride``, ``dim`` and
    ``name``; ``true_features(image01)`` gives the full-resolution B×dim×H×W truth.
    """

    def __init__(self, dim: int = 32, stride: int = 16, *, hidden_dim: int = 64, seed: int = 0):
        super().__init__()
        self.name = "synthetic"
        self.dim = dim
        self.stride = stride
        self.normalize = Normalize(IMAGENET_MEAN, IMAGENET_STD)
        g = torch.Generator().manual_seed(seed)
        # Inputs: rgb and its 3×3 local mean, centred; weights scaled so the hidden layer is well spread.
        self.register_buffer("w1", torch.randn(hidden_dim, 6, generator=g) * 2.0)
        self.register_buffer("b1", torch.randn(hidden_dim, generator=g) * 0.5)
        self.register_buffer("w2", torch.randn(dim, hidden_dim, generator=g) / math.sqrt(hidden_dim) * 2.0)
        self.register_buffer("b2", torch.randn(dim, generator=g) * 0.1)
        self.requires_grad_(False)
        self.eval()

    def true_features(self, image: torch.Tensor) -> torch.Tensor:
        """Full-resolution features B×dim×H×W of a B×3×H×W image in 0..1."""
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"expected a B×3×H×W image in 0..1, got shape {tuple(image.shape)}")
        local = F.avg_pool2d(F.pad(image, [1, 1, 1, 1], mode="replicate"), 3, stride=1)
        x = torch.cat([image, local], 1) - 0.5
        hidden = F.gelu(torch.einsum("kc,bchw->bkhw", self.w1.to(x.dtype), x) + self.b1.to(x.dtype)[:, None, None])
        out = torch.einsum("dk,bkhw->bdhw", self.w2.to(x.dtype), hidden) + self.b2.to(x.dtype)[:, None, None]
        return torch.tanh(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Low-resolution features B×dim×H/stride×W/stride of a normalised image batch."""
        h, w = x.shape[-2:]
        if h % self.stride or w % self.stride:
            raise ValueError(f"synthetic: image size {h}×{w} is not divisible by the stride {self.stride}; "
                             f"resize or crop to a multiple of {self.stride}")
        image = x * self.normalize.std.to(x.dtype) + self.normalize.mean.to(x.dtype)
        return F.avg_pool2d(self.true_features(image), self.stride)


def feature_metrics(prediction: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    """Mean per-pixel cosine similarity and mean per-image PSNR (peak = the truth's range) of B×C×H×W maps."""
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and truth {tuple(truth.shape)} differ in shape")
    prediction, truth = prediction.double(), truth.double()
    cosine = F.cosine_similarity(prediction, truth, dim=1).mean()
    mse = (prediction - truth).square().flatten(1).mean(1)
    peak = truth.flatten(1).amax(1) - truth.flatten(1).amin(1)
    psnr = (10 * torch.log10(peak.square() / mse.clamp_min(1e-20))).mean()
    return {"cosine": float(cosine), "psnr": float(psnr)}


def compare_on_synthetic(
    *,
    image_size: int = 224,
    stride: int = 16,
    dim: int = 32,
    train_images: int = 64,
    test_images: int = 4,
    jbu_steps: int = 300,
    jbu_layers: int = 4,
    jbu_options: dict[str, Any] | None = None,
    implicit_images: int | None = None,
    implicit_options: dict[str, Any] | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """Train JBU on synthetic images, fit implicit per held-out image, score bilinear / JBU / implicit against the truth.

    Returns, per upsampler, ``cosine`` and ``psnr`` on the held-out images (implicit on the first
    ``implicit_images`` of them, where bilinear is also reported as ``bilinear@implicit``) and timings:
    ``train_seconds`` (JBU training, implicit fitting per image) and ``step_seconds`` (JBU).
    """
    # Imported here: featup.training pulls in the upsamplers, which plain users of the task do not need.
    from featup.training import fit_implicit, train_jbu
    from featup.upsamplers import create_upsampler

    backbone = SyntheticBackbone(dim, stride, seed=seed)
    train = synthetic_images(train_images, image_size, seed=seed + 1)
    test = synthetic_images(test_images, image_size, seed=seed + 2)
    truth = backbone.true_features(test)
    with torch.no_grad():
        low = backbone(backbone.normalize(test))
    results = {"bilinear": feature_metrics(F.interpolate(low, size=truth.shape[-2:], mode="bilinear",
                                                         align_corners=False), truth)}

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        upsampler = create_upsampler("jbu", dim=dim, num_layers=jbu_layers)
    start = time.perf_counter()
    jbu, _ = train_jbu(backbone, train, jbu_steps, upsampler=upsampler, image_size=image_size, seed=seed,
                       progress=progress, **(jbu_options or {}))
    elapsed = time.perf_counter() - start
    with torch.no_grad():
        results["jbu"] = {**feature_metrics(jbu(low, test), truth), "train_seconds": elapsed,
                          "step_seconds": elapsed / max(jbu_steps, 1)}

    count = test_images if implicit_images is None else min(implicit_images, test_images)
    if count > 0:
        start = time.perf_counter()
        rendered = []
        for i in range(count):
            model = fit_implicit(test[i], backbone, seed=seed + i, progress=progress, **(implicit_options or {}))
            with torch.no_grad():
                rendered.append(model(low[i:i + 1], test[i:i + 1]))
        seconds = (time.perf_counter() - start) / count
        results["implicit"] = {**feature_metrics(torch.cat(rendered), truth[:count]), "train_seconds": seconds}
        if count < test_images:
            up = F.interpolate(low[:count], size=truth.shape[-2:], mode="bilinear", align_corners=False)
            results["bilinear@implicit"] = feature_metrics(up, truth[:count])
    return results
