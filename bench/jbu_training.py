"""What makes a trained JBU sharp? Ablations of train_jbu at one small budget, scored side by side.

Each variant trains a JBU for EfficientNet-Lite0 (stride-16 tap by default) on the same images for the
same steps, then is scored on the offline photos (featup.photos) beside bilinear and the classical
joint bilateral filter (``bilateral``): edge concentration (featup.eval.sharpness: share of feature
gradient energy on Canny edges over the share of edge pixels; 1 = blind to edges), pooled cosine to the
backbone (kept meaning), and the mean range-kernel entropy of the trained layers (log 49 = 3.89 nats:
the layer ignores the image). PCA pictures of every variant go to --out.

    python bench/jbu_training.py --steps 60 --variants published from-bilateral from-bilateral-crf
    python bench/jbu_training.py --steps 80 --variants --variant 'c05={"crf_weight": 0.05, "contrast_weight": 1}'
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from featup.backbones import load_backbone
from featup.data.offline import photo_crops
from featup.eval.features import image_tensor
from featup.eval.sharpness import (
    contrast_kept,
    edge_concentration,
    image_edges,
    pooled_cosine,
)
from featup.photos import sample_photos
from featup.training import train_jbu
from featup.upsamplers import create_upsampler
from featup.viz import pca_rgb, save_png, side_by_side

# Each variant: train_jbu keyword arguments on top of the command line's; "frozen" names upsampler parameters
# (by suffix) that keep their bilateral initial values.
VARIANTS: dict[str, dict] = {
    "published": {"range_kernel": "dot", "init": "random"},
    "published-decay": {"range_kernel": "dot", "init": "random", "lr_decay": True},
    "published-crf": {"range_kernel": "dot", "init": "random", "crf_weight": 0.001},
    "distance": {"range_kernel": "distance", "init": "random"},
    "from-bilateral": {},
    "from-bilateral-decay": {"lr_decay": True},
    "from-bilateral-simple": {"downsampler": "simple"},
    "from-bilateral-crf": {"crf_weight": 0.001},
    "from-bilateral-lowjitter": {"max_pad": 8, "max_zoom": 1.5},
    "from-bilateral-crf0.003": {"crf_weight": 0.003},
    "from-bilateral-crf0.005": {"crf_weight": 0.005},
    "from-bilateral-crf0.01": {"crf_weight": 0.01},
    "from-bilateral-crf0.02": {"crf_weight": 0.02},
    "from-bilateral-simple-crf0.01": {"downsampler": "simple", "crf_weight": 0.01},
    "from-bilateral-crf0.01-cons1": {"crf_weight": 0.01, "consistency_weight": 1.0},
    "from-bilateral-crf0.02-cons1": {"crf_weight": 0.02, "consistency_weight": 1.0},
    "from-bilateral-crf0.02-cons0.3": {"crf_weight": 0.02, "consistency_weight": 0.3},
    "from-bilateral-crf0.03-cons1": {"crf_weight": 0.03, "consistency_weight": 1.0},
    "from-bilateral-crf0.04-cons1": {"crf_weight": 0.04, "consistency_weight": 1.0},
    "from-bilateral-cons1": {"consistency_weight": 1.0},
    "from-bilateral-crf0.02-cons3": {"crf_weight": 0.02, "consistency_weight": 3.0},
    "from-bilateral-crf0.01-cons3": {"crf_weight": 0.01, "consistency_weight": 3.0},
    "from-bilateral-crf0.01-cons0.3": {"crf_weight": 0.01, "consistency_weight": 0.3},
    "from-bilateral-fixed-spatial": {"frozen": ("sigma_spatial",)},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", nargs="*", default=["published", "from-bilateral"], choices=sorted(VARIANTS))
    p.add_argument("--variant", action="append", default=[], metavar="NAME=JSON",
                   help='one more variant, trained after --variants: NAME={"crf_weight": 0.05, "contrast_weight": 1}')
    p.add_argument("--tap", default="stride16")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--num-jitters", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--head-lr", type=float, help="rate of the downsampler and uncertainty net (default: --lr)")
    p.add_argument("--crops-per-photo", type=int, default=4, help="training crops of each offline photo")
    p.add_argument("--out", default="featup-out/jbu-ablations")
    args = p.parse_args()
    variants = {name: VARIANTS[name] for name in args.variants}
    for item in args.variant:
        name, _, options = item.partition("=")
        variants[name] = json.loads(options)

    backbone = load_backbone("efficientnet_lite0", tap=args.tap)
    crops = [image_tensor(s["image"], 224)[0] for s in photo_crops(args.crops_per_photo, seed=1)]
    photos = sample_photos()
    images = torch.cat([image_tensor(photo, 224) for photo in photos.values()])
    edges = image_edges(images)
    with torch.no_grad():
        low = backbone(backbone.normalize(images))
    print(f"{len(crops)} training crops, {args.steps} steps of batch {args.batch_size} × {args.num_jitters} jitters, "
          f"lr {args.lr}; scored on {len(photos)} photos at 224 px; {backbone.id}; {platform.machine()}, "
          f"torch {torch.__version__}\n")
    print("| variant | edge concentration ↑ | pooled cosine ↑ | contrast kept | range entropy (nats) | s/step |")
    print("|---|---:|---:|---:|---:|---:|")
    outputs = {}
    shown = 4  # photos in the pictures: only their maps are kept (9 photos × 1280 channels × 224² are 2.3 GB a row)
    for name in ("bilinear", "bilateral"):
        high = upsample(create_upsampler(name), low, images)
        row(name, high, low, edges, None, None)
        outputs[name] = high[:shown].clone()
        del high
    for name, options in variants.items():
        start = time.perf_counter()
        options = dict(options)
        if frozen := tuple(options.pop("frozen", ())):
            options["upsampler"] = create_upsampler("jbu", dim=backbone.dim, range_kernel="distance")
            options["upsampler"].init_bilateral()
            for key, parameter in options["upsampler"].named_parameters():
                parameter.requires_grad_(not key.endswith(frozen))
        jbu, history = train_jbu(backbone, crops, args.steps, batch_size=args.batch_size, num_jitters=args.num_jitters,
                                 lr=args.lr, head_lr=args.head_lr, seed=0, progress=False, checkpoint=os.path.join(args.out, f"{name}.pt"),
                                 checkpoint_every=args.steps, **options)
        seconds = (time.perf_counter() - start) / max(args.steps, 1)
        high = upsample(jbu, low, images)
        entropy = sum(jbu.range_entropy(images, low.shape[-2:])) / jbu.num_layers
        row(name, high, low, edges, entropy, seconds)
        outputs[name] = high[:shown].clone()
        del high
        with open(os.path.join(args.out, f"{name}-history.json"), "w") as f:
            json.dump(history, f)
    for i, photo in enumerate(list(photos)[:shown]):
        rgb = pca_rgb([low[i]] + [high[i] for high in outputs.values()])
        save_png(side_by_side([images[i], *rgb]), os.path.join(args.out, f"{photo}.png"))
    print(f"\npictures: {args.out}/<photo>.png — image, low-res, {', '.join(outputs)}; checkpoints: {args.out}/<variant>.pt")


def upsample(upsampler, low: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([upsampler(low[i:i + 1], images[i:i + 1]) for i in range(len(images))])


def row(name: str, high: torch.Tensor, low: torch.Tensor, edges: torch.Tensor, entropy: float | None,
        seconds: float | None) -> None:
    # One photo at a time: the measures' intermediates of 9 photos × 1280 channels do not fit in memory.
    concentration = torch.cat([edge_concentration(high[i:i + 1], edges[i:i + 1]) for i in range(len(high))]).nanmean()
    cosine = torch.cat([pooled_cosine(high[i:i + 1], low[i:i + 1]) for i in range(len(high))]).mean()
    contrast = torch.cat([contrast_kept(high[i:i + 1], low[i:i + 1]) for i in range(len(high))]).mean()
    extra = f"{entropy:.2f} | {seconds:.2f}" if entropy is not None else "— | —"
    print(f"| {name} | {concentration:.2f} | {cosine:.3f} | {contrast:.3f} | {extra} |", flush=True)


if __name__ == "__main__":
    main()
