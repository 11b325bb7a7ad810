"""Fitting FeatUp's implicit upsampler to images by multi-view consistency: one image, or a batch at once.

The objective is the published one (``recipe="published"``): uncertainty-weighted likelihood of every
jittered view's backbone features given the rendered high-res features, jittered the same way and
pooled by an attention downsampler with overlapping windows, in a PCA space of the features, plus
magnitude, TV-of-magnitude and blur-pin regularisers. featup's default (``recipe="featup"``) keeps the
multi-view likelihood and changes the model, the start and the budget (``docs/bench/implicit.md`` has
the measurements behind each choice):

- the model is a residual over a guided base: the backbone's own low-res features upsampled by joint bilateral
  upsampling from the feature cells (``featup.upsamplers.implicit.guided_upsample``), 8× in one step (σs 0.5
  cells, σr 0.25) and then in doublings guided by the photo at each size (σs 1.5 of that stage's cells,
  σr 0.1), so the meaning is there from step 0 and the MLP, whose last layer starts at zero, only learns a
  correction. No back-projection: it made the features follow texture and lost depth; a narrower first σs
  left flat regions blocky, which a depth probe also reads; the doublings put feature edges on the photo's
  edges where one step from 32-px cells, whose mean colours blend both sides, left them soft (session 15);
- the attention pooling starts as a plain window average (zero saliency weights): the published random
  saliency over features whose magnitude channel is ~10 makes the first steps' pooling so peaked that
  the first step's reconstruction error is 30–55× larger (astronaut, voc) and the MLP paints it away,
  losing the meaning;
- Fourier frequencies up to e^1 instead of e^10, no dropout, a learning rate of 1e-4; the phases stay at their
  random start. At a CPU budget the correction cannot learn the views' sub-cell structure: its 30 noisy steps
  only add colour texture (lower edge concentration) and pull cells away from the view's own features, the more
  so the faster and the higher its frequencies (e^4 at 1e-3 cost the stride-32 head 0.9 concentration and 0.03
  pooled cosine against its base), so the default keeps it small;
- an edge-aware smoothness term replaces blur-pin, TV and magnitude terms: feature changes are cheap
  across the photo's edges and dear inside flat regions;
- 30 steps of 4 views from a pool of 48.

Speed (``engine="fast"``, the default; ``engine="reference"`` is the straightforward path the tests
compare it with, same loss at the same seed to float tolerance):

- the sines and cosines of the Fourier features' arguments are computed once per fit; a step only
  mixes them with its learned phases (sin(a + φ) = sin a cos φ + cos a sin φ);
- the MLP runs channels-last as batched matrix products (``baddbmm``), one MLP per image of a batch; the
  first LayerNorm's affine map and dropout are folded into the first layer's 303×128 weights, and with
  frozen phases (the default recipe) the normalised Fourier features are computed once and the first
  layer needs no input gradient;
- a view's jitter, blur, padding and window layout are fixed when the view is drawn, and separable: per
  view and window they are two small matrices, so the pooled features of all views are ONE sparse
  matrix product with the rendered map (its weights rebuilt each step from the attention), instead of
  resampling, blurring and padding every channel of every view; each view's pattern sorted by source
  pixel is cached, so the backward product never sorts;
- with random projections, the views are pooled in the full space and projected afterwards (linear).

Every random draw of image i of a batch comes from its own generator seeded ``seed + i``, so a batch
fit gives each image exactly what ``fit_implicit(image, seed=seed + i)`` gives it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from featup.training._common import LogFn, check_backbone, device_of
from featup.training._implicit_fit import _BatchFit
from featup.training._implicit_recipes import RECIPES, ImplicitRecipe, implicit_recipe
from featup.upsamplers.implicit import ImplicitUpsampler

__all__ = ["RECIPES", "ImplicitRecipe", "fit_implicit", "fit_implicit_batch", "implicit_recipe"]


def fit_implicit(image: torch.Tensor, backbone: nn.Module, *, recipe: str | ImplicitRecipe = "featup",
                 seed: int = 0, engine: str = "fast", progress: bool = True, log: LogFn | None = None,
                 **options) -> ImplicitUpsampler:
    """Fit an implicit upsampler to one 3×H×W (or 1×3×H×W) image in 0..1 for a frozen backbone.

    ``recipe`` names a recipe in ``RECIPES`` (``"featup"``, the default; ``"published"``; ``"featup-v0"``)
    and ``options`` replace its fields (``steps=100``, ``max_log_freq=10``, ...). ``log`` receives each
    step's loss terms. See the module's docstring for what the recipes do and ``fit_implicit_batch`` for
    many images at once.
    """
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[:2] != (1, 3) or not image.is_floating_point():
        raise ValueError(f"expected one 3×H×W float image in 0..1, got {image.dtype} {tuple(image.shape)}")
    return fit_implicit_batch(image, backbone, recipe=recipe, seed=seed, engine=engine, progress=progress,
                              log=log, **options)[0]


def fit_implicit_batch(images: torch.Tensor | Sequence[torch.Tensor], backbone: nn.Module, *,
                       recipe: str | ImplicitRecipe = "featup", seed: int = 0, engine: str = "fast",
                       progress: bool = True, log: LogFn | None = None, **options) -> list[ImplicitUpsampler]:
    """Fit one implicit upsampler per image of a B×3×H×W batch (0..1), all B MLPs in one vectorised loop.

    Image i gets exactly the fit ``fit_implicit(images[i], seed=seed + i)`` gives it (float tolerance):
    its own views, dropout and parameters, drawn from its own generator; the batch only shares the
    matrix products. ``log`` receives the losses summed over the batch.
    """
    check_backbone(backbone)
    if not isinstance(images, torch.Tensor):
        images = torch.stack([torch.as_tensor(x) for x in images])
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] < 1 or not images.is_floating_point():
        raise ValueError(f"expected a B×3×H×W float batch of images in 0..1 (B >= 1), got {images.dtype} "
                         f"{tuple(images.shape)}")
    if engine not in ("fast", "reference"):
        raise ValueError(f"unknown engine {engine!r}; choose 'fast' or 'reference'")
    cfg = implicit_recipe(recipe, **options)
    stride = backbone.stride
    h, w = images.shape[-2:]
    if h % stride or w % stride:
        raise ValueError(f"image size {h}×{w} is not divisible by the backbone's stride {stride}; resize it first "
                         "(featup.backbones.resize_to_stride)")
    device = device_of(backbone)
    backbone.eval()
    fit = _BatchFit(images.to(device), backbone, cfg, seed, engine, progress)
    fit.run(progress, log)
    return fit.models
