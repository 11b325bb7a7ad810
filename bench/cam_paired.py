"""CAM Average Drop of the stride-32 head's upsamplers, each paired per image with a baseline's, with its standard error.

A.D. is a mean over images of drops that vary by tens of points from image to image, so two upsamplers a point
apart can swap places on another set of images. Pairing removes the images' own spread: for each upsampler this
prints its A.D., the mean per-image difference to the baseline's ± its standard error, and on how many images
it drops less. Images are crops of the nine offline photos (``featup.data.offline.photo_crops``); the CAM table
of ``bench/evaluate.py`` uses seed 0 with 8 crops per photo, so pick another seed for images it has not seen.

    python bench/cam_paired.py --crops-per-photo 16 --seed 5
    python bench/cam_paired.py --jbu other=featup-out/run/jbu_efficientnet_lite0-stride32.pt --back-projection 0.5 1
"""

from __future__ import annotations

import argparse

import torch

from featup.backbones import load_backbone
from featup.data.offline import photo_crops
from featup.eval.cam import explain
from featup.eval.features import image_tensor
from featup.upsamplers import create_upsampler, load_upsampler


def per_image_drops(head, images, upsampler, output_size: int) -> torch.Tensor:
    """100·max(0, Y − O)/Y of each image's CAM (``featup.eval.metrics.average_drop`` before its mean)."""
    outcomes = [explain(head, image, upsampler, output_size=(output_size, output_size)) for image in images]
    y = torch.tensor([o.y for o in outcomes], dtype=torch.float64)
    o = torch.tensor([o.o for o in outcomes], dtype=torch.float64)
    return 100 * (y - o).clamp_min(0) / y.clamp_min(1e-12)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--crops-per-photo", type=int, default=16)
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--output-size", type=int, default=112, help="upsampled size of the CAM maps (the table's)")
    p.add_argument("--baseline", default="bilateral", help="registered upsampler the others are paired with")
    p.add_argument("--jbu", nargs="*", default=[], metavar="NAME=CHECKPOINT", help="more stride-32 JBUs to score")
    p.add_argument("--back-projection", type=float, nargs="*", default=[], metavar="ALPHA",
                   help="also score each --jbu checkpoint with these back-projection steps (0..1)")
    args = p.parse_args()

    head = load_backbone("efficientnet_lite0", tap="stride32")
    images = [image_tensor(s["image"], 224) for s in photo_crops(args.crops_per_photo, seed=args.seed, size=224)]
    upsamplers = {args.baseline: create_upsampler(args.baseline).eval(), "bilinear": create_upsampler("bilinear"),
                  "jbu (shipped)": load_upsampler("jbu", backbone=head.id)}
    for spec in args.jbu:
        name, _, path = spec.partition("=")
        upsamplers[name] = load_upsampler("jbu", backbone=head.id, checkpoint=path)
        for alpha in args.back_projection:
            upsamplers[f"{name}, back-projection {alpha:g}"] = load_upsampler(
                "jbu", backbone=head.id, checkpoint=path, back_projection=alpha)
    drops = {name: per_image_drops(head, images, up, args.output_size) for name, up in upsamplers.items()}
    base = drops[args.baseline]
    print(f"{len(images)} crops ({args.crops_per_photo} per photo, seed {args.seed}), CAMs at {args.output_size} px\n")
    print(f"| upsampler | A.D. ↓ | − {args.baseline}, paired ± s.e. | drops less on |\n|---|---:|---:|---:|")
    for name, d in drops.items():
        diff = d - base
        paired = "—" if name == args.baseline else f"{diff.mean():+.2f} ± {diff.std() / len(diff) ** 0.5:.2f}"
        fewer = "—" if name == args.baseline else f"{int((diff < 0).sum())} / {len(diff)}"
        print(f"| {name} | {d.mean():.2f} | {paired} | {fewer} |")


if __name__ == "__main__":
    main()
