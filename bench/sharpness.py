"""Do the shipped JBU checkpoints (and implicit fits) sharpen real photos' features, and keep their meaning?

For each offline photo (featup.photos) at 224 px and each EfficientNet-Lite0 tap with a shipped JBU,
the low-res features are upsampled by bilinear, bicubic and the JBU (and, with --implicit-steps, by
implicit fits of those budgets to the first --implicit-photos photos), then scored:

- edge alignment (featup.eval.edge_alignment): correlation between where the features change and where
  the photo does; higher = sharper along the photo's edges;
- kept meaning: cosine similarity between the upsampled features average-pooled back onto the
  backbone's grid and the backbone's own features (1 = nothing added or lost at that scale).

    python bench/sharpness.py
    python bench/sharpness.py --taps stride16 --implicit-steps 100 200 --implicit-photos 2
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
import torch.nn.functional as F

from featup.backbones import load_backbone
from featup.eval import edge_alignment
from featup.eval.features import image_tensor
from featup.photos import list_sample_photos, sample_photos
from featup.training import fit_implicit
from featup.upsamplers import load_upsampler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--taps", nargs="+", default=["stride16", "stride32"])
    parser.add_argument("--size", type=int, default=224, help="image side in px")
    parser.add_argument("--output-size", type=int, default=None, help="upsampled side (default: --size)")
    parser.add_argument("--implicit-steps", type=int, nargs="*", default=[], help="implicit fit budgets to score")
    parser.add_argument("--implicit-photos", type=int, default=2, help="photos the implicit fits are scored on")
    parser.add_argument("--implicit-views", type=int, default=64, help="views in each implicit fit's pool")
    parser.add_argument("--implicit-views-per-step", type=int, default=8)
    args = parser.parse_args()
    out = args.output_size or args.size
    photos = sample_photos(list_sample_photos())
    images = torch.cat([image_tensor(photo, args.size) for photo in photos.values()])
    guide = F.interpolate(images, size=(out, out), mode="area")
    print(f"{len(photos)} photos at {args.size} px, features upsampled to {out} px; "
          f"{platform.machine()}, torch {torch.__version__}\n")
    for tap in args.taps:
        backbone = load_backbone("efficientnet_lite0", tap=tap)
        jbu = load_upsampler("jbu", backbone=backbone.id)
        with torch.no_grad():
            low = backbone(backbone.normalize(images))
            outputs = {
                "bilinear": F.interpolate(low, size=(out, out), mode="bilinear", align_corners=False),
                "bicubic": F.interpolate(low, size=(out, out), mode="bicubic", align_corners=False),
                "jbu": torch.cat([jbu(low[i:i + 1], images[i:i + 1], (out, out)) for i in range(len(low))]),
            }
        score(backbone, outputs, low, guide)
        print()
        if args.implicit_steps:
            k = args.implicit_photos
            subset = {name: high[:k] for name, high in outputs.items()}
            for steps in args.implicit_steps:
                start = time.perf_counter()
                subset[f"implicit, {steps} steps"] = torch.cat(
                    [implicit(backbone, images[i:i + 1], low[i:i + 1], steps, out, args) for i in range(k)])
                print(f"(implicit fits of {steps} steps: {(time.perf_counter() - start) / k:.0f} s per photo)")
            print(f"\nOn the first {k} photos:\n")
            score(backbone, subset, low[:k], guide[:k])


def implicit(backbone, image: torch.Tensor, low: torch.Tensor, steps: int, out: int,
             args: argparse.Namespace) -> torch.Tensor:
    """The features of an implicit upsampler fitted to ``image`` for ``steps`` steps, rendered at out × out."""
    model = fit_implicit(image, backbone, steps=steps, views=args.implicit_views,
                         views_per_step=args.implicit_views_per_step, progress=False)
    with torch.no_grad():
        return model(low, image, (out, out))


def score(backbone, outputs: dict[str, torch.Tensor], low: torch.Tensor, guide: torch.Tensor) -> None:
    """Print a table of each upsampler's edge alignment and pooled cosine."""
    print("| backbone | upsampler | edge alignment ↑ | kept meaning (pooled cosine) ↑ |\n|---|---|---:|---:|")
    for name, high in outputs.items():
        pooled = F.adaptive_avg_pool2d(high, low.shape[-2:])
        kept = F.cosine_similarity(pooled, low, dim=1).mean()
        print(f"| {backbone.id} ({backbone.dim} ch) | {name} | {edge_alignment(high, guide):.3f} | {kept:.3f} |")


if __name__ == "__main__":
    main()
