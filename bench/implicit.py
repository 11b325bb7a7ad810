"""Implicit upsampler: speed of a fit (old path vs new, against 64 backbone passes) and quality of recipes.

All on EfficientNet-Lite0 (ImageNet weights, stride 16, 112 ch) and offline sample photos at 224 px.
Every time is a ratio measured in this one process, because the machines these run on are shared.

    python bench/implicit.py timing                   # a fit step: reference path vs fast path; the default fit vs 64 passes
    python bench/implicit.py quality                  # recipes on photos: pooled cosine and edge concentration vs bilinear
    python bench/implicit.py quality --set max_log_freq=10 --set residual=False   # an ablation
    python bench/implicit.py batch --batch-sizes 1 4  # images per minute of fit_implicit_batch
    python bench/implicit.py quality --recipes featup featup:steps=0 featup:max_log_freq=10.0   # recipe:field=value
    python bench/implicit.py pictures --out docs/img/implicit/recipes.png

Measures (per photo, averaged):
- pooled cosine: cosine between the rendered 224² features average-pooled to the backbone's 14×14 grid and
  the backbone's own features (1 = the meaning at that scale is kept);
- edge concentration: share of the channel-standardised feature-gradient energy that lies on the photo's
  Canny edges, divided by the share of those edge pixels (1 = blind to edges); featup.eval.sharpness, the
  measure of bench/sharpness.py (before session 8 this script used its own variant: forward differences and
  edges dilated by a pixel, so its older numbers in docs/bench/implicit.md are on that scale).
"""

from __future__ import annotations

import argparse
import ast
import platform
import time

import numpy as np
import torch
import torch.nn.functional as F

from featup.backbones import load_backbone
from featup.eval import sharpness
from featup.eval.features import image_tensor
from featup.photos import sample_photos
from featup.training.implicit import fit_implicit, fit_implicit_batch, implicit_recipe

PHOTOS = ["chelsea", "astronaut", "coffee", "voc"]


def edge_concentration(features: torch.Tensor, image: torch.Tensor) -> float:
    """featup.eval.sharpness.edge_concentration on the photos' Canny edges, averaged over the photos."""
    return float(sharpness.edge_concentration(features, sharpness.image_edges(image)).nanmean())


def pooled_cosine(features: torch.Tensor, low: torch.Tensor) -> float:
    return float(sharpness.pooled_cosine(features, low).mean())


def overrides(pairs: list[str]) -> dict:
    """--set name=value pairs as recipe overrides (values are Python literals)."""
    out = {}
    for pair in pairs:
        name, value = pair.split("=", 1)
        out[name] = ast.literal_eval(value)
    return out


def recipe_spec(spec: str) -> tuple[str, dict]:
    """'featup' or 'featup:steps=0:max_log_freq=10.0' -> (recipe name, overrides)."""
    name, *pairs = spec.split(":")
    return name, overrides(pairs)


def forward_64(backbone, image: torch.Tensor) -> float:
    """Seconds for 64 backbone forward passes at the image's size, in one batch of 64."""
    batch = image.expand(64, -1, -1, -1).contiguous()
    with torch.no_grad():
        backbone(backbone.normalize(batch[:8]))
        start = time.perf_counter()
        backbone(backbone.normalize(batch))
    return time.perf_counter() - start


def step_seconds(image, backbone, recipe: str, engine: str, steps: int, options: dict) -> float:
    """Median seconds of one fit step (the views featurised before the first step are not counted)."""
    stamps: list[float] = []
    fit_implicit(image, backbone, recipe=recipe, engine=engine, steps=steps + 1, views=16, pca_views=16,
                 progress=False, log=lambda record: stamps.append(time.perf_counter()), **options)
    return float(np.median(np.diff(stamps)))


def timing(args, backbone, images) -> None:
    image = images[:1]
    options = overrides(args.set)
    print("| what | seconds | ratio |\n|---|---:|---:|")
    for recipe in args.recipes:
        per_step = {engine: step_seconds(image, backbone, recipe, engine, args.steps, options)
                    for engine in ("reference", "fast")}
        for engine, seconds in per_step.items():
            print(f"| {recipe}: one step, {engine} path | {seconds:.3f} | |")
        print(f"| {recipe}: speed-up of a step | | {per_step['reference'] / per_step['fast']:.1f}× |", flush=True)
    t64 = forward_64(backbone, image)
    start = time.perf_counter()
    fit_implicit(image, backbone, progress=False, **options)
    whole = time.perf_counter() - start
    t64 = (t64 + forward_64(backbone, image)) / 2
    print(f"| 64 efficientnet_lite0 passes at 224 px, one batch (mean of before and after) | {t64:.2f} | 1 |")
    print(f"| default fit ('featup', {implicit_recipe('featup', **options).steps} steps), views featurised "
          f"included | {whole:.2f} | {whole / t64:.1f}× |")


def quality(args, backbone, images, low) -> None:
    bilinear = F.interpolate(low, size=images.shape[-2:], mode="bilinear", align_corners=False)
    base_edges = edge_concentration(bilinear, images)
    print("| upsampler | pooled cosine | edge concentration | vs bilinear | seconds / image |\n|---|---:|---:|---:|---:|")
    print(f"| bilinear | {pooled_cosine(bilinear, low):.3f} | {base_edges:.2f} | 1.00× | |")
    for spec in args.recipes:
        recipe, options = recipe_spec(spec)
        options = {**overrides(args.set), **options}
        start = time.perf_counter()
        rendered = torch.cat([render(fit_implicit(images[i:i + 1], backbone, recipe=recipe, seed=args.seed,
                                                  progress=False, **options), images[i:i + 1])
                              for i in range(len(images))])
        seconds = (time.perf_counter() - start) / len(images)
        edges = edge_concentration(rendered, images)
        label = recipe + "".join(f", {k}={v}" for k, v in options.items())
        print(f"| implicit ({label}) | {pooled_cosine(rendered, low):.3f} | {edges:.2f} | "
              f"{edges / base_edges:.2f}× | {seconds:.0f} |", flush=True)


def render(model, image: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(None, image)


def batch(args, backbone, images) -> None:
    options = overrides(args.set)
    t64 = forward_64(backbone, images[:1])
    print(f"64 backbone passes: {t64:.2f} s\n\n| images per fit | seconds | images / min | seconds per image / 64 passes |\n"
          "|---:|---:|---:|---:|")
    for size in args.batch_sizes:
        chunk = images[torch.arange(size) % len(images)]
        start = time.perf_counter()
        fit_implicit_batch(chunk, backbone, recipe=args.recipes[0], progress=False, **options)
        seconds = time.perf_counter() - start
        print(f"| {size} | {seconds:.1f} | {60 * size / seconds:.2f} | {seconds / size / t64:.1f}× |", flush=True)


def pictures(args, backbone, images, low) -> None:
    from featup.viz import pca_rgb, save_png, side_by_side

    rows = []
    for i in range(len(images)):
        image = images[i:i + 1]
        maps = [F.interpolate(low[i:i + 1], size=image.shape[-2:], mode="bilinear", align_corners=False)]
        for spec in args.recipes:
            recipe, options = recipe_spec(spec)
            model = fit_implicit(image, backbone, recipe=recipe, seed=args.seed, progress=False,
                                 **{**overrides(args.set), **options})
            maps.append(render(model, image))
        rows.append(side_by_side([image[0], *pca_rgb([low[i], *maps])]))
    save_png(torch.cat([torch.cat([r, torch.ones(3, 4, r.shape[-1])], 1) for r in rows], 1)[:, :-4], args.out)
    print(f"wrote {args.out}: per row the photo, low-res, bilinear, then " + ", ".join(args.recipes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["timing", "quality", "batch", "pictures"])
    parser.add_argument("--photos", nargs="+", default=PHOTOS)
    parser.add_argument("--recipes", nargs="+", default=None)
    parser.add_argument("--set", action="append", default=[], help="recipe override name=value (repeatable)")
    parser.add_argument("--steps", type=int, default=4, help="timing: steps timed per path")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="1: on a busy machine a second thread costs more than it gives")
    parser.add_argument("--out", default="docs/img/implicit/recipes.png")
    args = parser.parse_args()
    args.recipes = args.recipes or (["featup-v0", "featup"] if args.mode == "timing" else ["featup"])
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    backbone = load_backbone("efficientnet_lite0")
    images = torch.cat([image_tensor(p, 224) for p in sample_photos(args.photos).values()])
    with torch.no_grad():
        low = backbone(backbone.normalize(images))
    print(f"efficientnet_lite0 stride 16, photos {args.photos} at 224 px; {platform.machine()}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}\n")
    if args.mode == "timing":
        timing(args, backbone, images)
    elif args.mode == "quality":
        quality(args, backbone, images, low)
    elif args.mode == "batch":
        batch(args, backbone, images)
    else:
        pictures(args, backbone, images, low)


if __name__ == "__main__":
    main()
