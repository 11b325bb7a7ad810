"""The library's command line: list backbones, render PCA feature images of photos.

``flows.cli`` extends this parser with one subcommand per Prefect flow; the ``featup`` console command
is that extended parser. This module stays free of Prefect.
"""

from __future__ import annotations

import argparse
import sys
import typing
from collections.abc import Sequence
from pathlib import Path

__all__ = ["ArgumentParser", "build_parser", "first_line", "main", "run_command"]

# The name of the backbone's own features wherever a list of upsamplers is given (pca, evaluate, demo).
LOWRES = "lowres"


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a usage error on one line that names the fix (``--help``), exit status 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _image_side(text: str) -> int:
    """An image side in pixels: a whole number of at least 16 (one patch of most backbones)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of pixels, got {text!r}") from None
    if value < 16:
        raise argparse.ArgumentTypeError(f"must be at least 16 px, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``featup`` argument parser with the library subcommands."""
    parser = ArgumentParser(
        prog="featup",
        description="FeatUp: upsample the features of any vision backbone to any resolution.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    listing = sub.add_parser("backbones", help="list registered backbones with their taps, strides and channels",
                             description="List registered backbones (any timm model name also works).")
    listing.set_defaults(handler=_backbones)

    pca = sub.add_parser(
        "pca",
        help="extract backbone features of photos and write PCA images (lowres vs upsampled)",
        description="Extract features of photos and write, per photo, a PNG showing the image, the "
                    "backbone's own (lowres) features and each upsampler's output under one jointly fitted PCA "
                    "basis, each panel titled. The file name carries the photo, backbone (with its tap) and size, so "
                    "runs with other settings do not replace each other's pictures.",
    )
    pca.add_argument("images", nargs="*", help="image files or fsspec URLs (default: the offline sample photos)")
    pca.add_argument("--photos", nargs="+", metavar="NAME",
                     help="sample photos by name (see featup.photos.list_sample_photos())")
    pca.add_argument("--backbone", default="efficientnet_lite0", help="backbone name (default: %(default)s)")
    pca.add_argument("--tap", default=None, help="backbone layer, e.g. stride16 / stride32 (default: its own)")
    pca.add_argument("--weights", default=None, help="backbone weights: a path or fsspec URL")
    pca.add_argument("--random-weights", action="store_true", help="use random backbone weights")
    pca.add_argument("--upsamplers", nargs="+", default=["bilinear"], metavar="NAME",
                     help=f"upsamplers to show next to the {LOWRES} features, which are always shown "
                          "(default: bilinear); implicit is fitted to each image first (about a minute each)")
    pca.add_argument("--size", type=_image_side, default=224,
                     help="short side of the input image in px, at least 16 (default: 224)")
    pca.add_argument("--out", default="featup-out/pca", help="output folder or fsspec URL (default: %(default)s)")
    pca.set_defaults(handler=_pca)
    return parser


def _tap_channels(name: str, tap: str) -> int:
    """Channels of a backbone tap, from the architecture alone (built on the meta device: no weights, no memory)."""
    import torch

    from featup.backbones import load_backbone

    with torch.device("meta"):
        return load_backbone(name, pretrained=False, tap=tap).dim


def _backbones(args: argparse.Namespace) -> int:
    from featup.backbones import BACKBONES

    rows = []
    for name in BACKBONES.names():
        spec = BACKBONES[name]
        taps = ", ".join(f"{t} ({s})" + ("*" if t == spec.default_tap else "") for t, s in spec.taps.items())
        channels = ", ".join(str(_tap_channels(name, t)) for t in spec.taps)
        rows.append((name, spec.arch, taps, channels, spec.weights_hint))
    header = ("name", "timm architecture", "taps (stride)", "channels", "real weights")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
    print("\n* default tap. Any other timm model: load_backbone('<timm name>', tap='strideN').")
    return 0


def _pca(args: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    from featup.backbones import load_backbone, resize_to_stride
    from featup.io import exists
    from featup.photos import load_image, sample_photos, to_tensor
    from featup.upsamplers import list_upsamplers, load_upsampler
    from featup.viz import pca_rgb, save_png, side_by_side

    if args.images and args.photos:
        raise ValueError("give either image files or --photos, not both")
    names = [n for n in args.upsamplers if n != LOWRES]  # lowres is always the first panel
    unknown = [n for n in names if n not in list_upsamplers()]
    if unknown:
        raise ValueError(f"--upsamplers: unknown upsampler {unknown[0]!r}: choose from "
                         f"{', '.join([LOWRES, *list_upsamplers()])}")
    images = {Path(p).stem: load_image(p) for p in args.images} if args.images else sample_photos(args.photos)
    backbone = load_backbone(args.backbone, pretrained=not args.random_weights, weights=args.weights, tap=args.tap)
    upsamplers = {name: _fitted_per_image(backbone) if name == "implicit" else
                  load_upsampler(name, backbone=backbone.id).eval() for name in names}
    written, replaced = [], 0
    for name, array in tqdm(images.items(), desc="photos", unit="img"):
        image = resize_to_stride(to_tensor(array), args.size, backbone.stride)
        with torch.no_grad():
            low = backbone(backbone.normalize(image))
            highs = [up(low, image) for up in upsamplers.values()]
        rgbs = pca_rgb([low, *highs])
        size = tuple(image.shape[-2:])
        grid = f"{low.shape[-2]}×{low.shape[-1]}"
        titles = ["image", f"{LOWRES} {grid}", *(f"{n} {size[0]}×{size[1]}" for n in upsamplers)]
        url = f"{args.out.rstrip('/')}/{name}-{backbone.id}-{args.size}px.png"
        replaced += exists(url)
        written.append(save_png(side_by_side([image[0], *rgbs], size=size, titles=titles), url))
    print(f"wrote {len(written)} PCA images (image | {LOWRES} {backbone.id} | {' | '.join(upsamplers)}) to "
          f"{args.out}" + (f", replacing {replaced} of the same name" if replaced else "") + ":")
    for url in written:
        print(f"  {url}")
    return 0


def _fitted_per_image(backbone):
    """The implicit upsampler as ``featup pca`` uses it: fitted to each image (default recipe), then rendered."""
    from featup.pipeline.models import ImplicitPerImage

    fit_and_render = ImplicitPerImage(backbone)
    return lambda low, image: fit_and_render(low, image, tuple(image.shape[-2:]))


def run_command(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run its handler; user errors print one clear line and exit with status 2."""
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError, KeyError, PermissionError) as e:
        print(f"featup {args.command}: error: {first_line(e)}", file=sys.stderr)
        return 2


def first_line(error: BaseException) -> str:
    """An error's message on one line: some (torch.load's) add paragraphs of advice meant for developers."""
    message = (error.args[0] if isinstance(error, KeyError) and error.args else str(error)).strip()
    return message.splitlines()[0] if message else type(error).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the library-only CLI."""
    return run_command(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
