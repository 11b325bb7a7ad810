"""Do the shipped JBU checkpoints sharpen real photos' features, and do they keep their meaning?

For each offline photo (featup.photos) at 224 px and each EfficientNet-Lite0 tap with a shipped JBU,
the low-res features are upsampled by bilinear, bicubic and the JBU, then scored:

- edge alignment (featup.eval.edge_alignment): correlation between where the features change and where
  the photo does; higher = sharper along the photo's edges;
- kept meaning: cosine similarity between the upsampled features average-pooled back onto the
  backbone's grid and the backbone's own features (1 = nothing added or lost at that scale).

    python bench/sharpness.py
"""

from __future__ import annotations

import argparse
import platform

import torch
import torch.nn.functional as F

from featup.backbones import load_backbone
from featup.eval import edge_alignment
from featup.eval.features import image_tensor
from featup.photos import list_sample_photos, sample_photos
from featup.upsamplers import load_upsampler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--taps", nargs="+", default=["stride16", "stride32"])
    parser.add_argument("--size", type=int, default=224, help="image side in px")
    parser.add_argument("--output-size", type=int, default=None, help="upsampled side (default: --size)")
    args = parser.parse_args()
    out = args.output_size or args.size
    photos = sample_photos(list_sample_photos())
    images = torch.cat([image_tensor(photo, args.size) for photo in photos.values()])
    guide = F.interpolate(images, size=(out, out), mode="area")
    print(f"{len(photos)} photos at {args.size} px, features upsampled to {out} px; "
          f"{platform.machine()}, torch {torch.__version__}\n")
    print("| backbone | upsampler | edge alignment ↑ | kept meaning (pooled cosine) ↑ |\n|---|---|---:|---:|")
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
        for name, high in outputs.items():
            pooled = F.adaptive_avg_pool2d(high, low.shape[-2:])
            kept = F.cosine_similarity(pooled, low, dim=1).mean()
            print(f"| {backbone.id} ({backbone.dim} ch) | {name} | {edge_alignment(high, guide):.3f} | {kept:.3f} |")


if __name__ == "__main__":
    main()
