"""The library's command line: list backbones, render PCA feature images of photos.

``flows.cli`` extends this parser with one subcommand per Prefect flow; the ``featup`` console command
is that extended parser. This module stays free of Prefect.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["build_parser", "main", "run_command"]


def build_parser() -> argparse.ArgumentParser:
    """The ``featup`` argument parser with the library subcommands."""
    parser = argparse.ArgumentParser(
        prog="featup",
        description="FeatUp: upsample the features of any vision backbone to any resolution.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    listing = sub.add_parser("backbones", help="list registered backbones with their stride and width",
                             description="List registered backbones (any timm model name also works).")
    listing.set_defaults(handler=_backbones)

    pca = sub.add_parser(
        "pca",
        help="extract backbone features of photos and write PCA images (low-res vs upsampled)",
        description="Extract features of photos and write, per photo, a PNG showing the image, the "
                    "low-res features and each upsampler's output under one jointly fitted PCA basis.",
    )
    pca.add_argument("images", nargs="*", help="image files or fsspec URLs (default: the offline sample photos)")
    pca.add_argument("--photos", nargs="+", metavar="NAME",
                     help="sample photos by name (see featup.photos.list_sample_photos())")
    pca.add_argument("--backbone", default="efficientnet_lite0", help="backbone name (default: %(default)s)")
    pca.add_argument("--tap", default=None, help="backbone layer, e.g. stride16 / stride32 (default: its own)")
    pca.add_argument("--weights", default=None, help="backbone weights: a path or fsspec URL")
    pca.add_argument("--random-weights", action="store_true", help="use random backbone weights")
    pca.add_argument("--upsamplers", nargs="+", default=["bilinear"], metavar="NAME",
                     help="upsamplers to show next to the low-res features (default: %(default)s)")
    pca.add_argument("--size", type=int, default=224, help="short side of the input image in px (default: 224)")
    pca.add_argument("--out", default="featup-out/pca", help="output folder or fsspec URL (default: %(default)s)")
    pca.set_defaults(handler=_pca)
    return parser


def _backbones(args: argparse.Namespace) -> int:
    from featup.backbones import _REGISTRY

    print(f"{'name':<20} {'timm architecture':<28} {'taps (stride)':<28} weights")
    for name in sorted(_REGISTRY):
        spec = _REGISTRY[name]
        taps = ", ".join(f"{t} ({s})" + ("*" if t == spec.default_tap else "") for t, s in spec.taps.items())
        print(f"{name:<20} {spec.arch:<28} {taps:<28} {spec.weights_hint}")
    print("\n* default tap. Any other timm model: load_backbone('<timm name>', tap='strideN').")
    return 0


def _pca(args: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    from featup.backbones import load_backbone, resize_to_stride
    from featup.photos import load_image, sample_photos, to_tensor
    from featup.upsamplers import load_upsampler
    from featup.viz import pca_rgb, save_png, side_by_side

    if args.images and args.photos:
        raise ValueError("give either image files or --photos, not both")
    images = {Path(p).stem: load_image(p) for p in args.images} if args.images else sample_photos(args.photos)
    backbone = load_backbone(args.backbone, pretrained=not args.random_weights, weights=args.weights, tap=args.tap)
    upsamplers = {name: load_upsampler(name, backbone=backbone.id).eval() for name in args.upsamplers}
    written = []
    for name, array in tqdm(images.items(), desc="photos", unit="img"):
        image = resize_to_stride(to_tensor(array), args.size, backbone.stride)
        with torch.no_grad():
            low = backbone(backbone.normalize(image))
            highs = [up(low, image) for up in upsamplers.values()]
        rgbs = pca_rgb([low, *highs])
        size = tuple(image.shape[-2:])
        written.append(save_png(side_by_side([image[0], *rgbs], size=size), f"{args.out.rstrip('/')}/{name}.png"))
    print(f"wrote {len(written)} PCA images (image | low-res {backbone.name} | "
          f"{' | '.join(args.upsamplers)}) to {args.out}")
    return 0


def run_command(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run its handler; user errors print one clear line and exit with status 2."""
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError, KeyError, PermissionError) as e:
        print(f"featup {args.command}: error: {e}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the library-only CLI."""
    return run_command(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
