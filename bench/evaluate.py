"""Compare upsamplers on the offline benchmark sets with EfficientNet-Lite0's real ImageNet weights.

Three tables, like Table 1 of the FeatUp paper, on sets that build offline (featup.data.offline):

- main: lowres, bilinear, the classical joint bilateral filter (untrained), resize-conv, JBU; CAM
  faithfulness on crops of the real photos (stride-32
  head with its ImageNet classifier), segmentation probes on Fashion-MNIST mosaics and depth probes on
  ray-cast scenes (stride-16 tap), each probe trained on that upsampler's own features (--protocol);
- transfer: the same probe tasks with ONE probe trained on lowres features and applied to every
  upsampler's features (FeatUp's "drop-in" claim);
- implicit: every upsampler plus the per-image implicit one (its default recipe), on the first
  --implicit-images test images of each task (implicit fitting is the slow part), probes as in "transfer";
- implicit-own: the same with each upsampler's own probe, trained on --implicit-train images per task.

JBU and resize-conv come from --jbu-checkpoint / --resize-conv-checkpoint, else the checkpoint featup
ships, else they are trained here with the multi-view loss (featup.training.train_jbu) on photo crops
and the train splits' images, and cached under --out. The stride-32 head's CAMs use --jbu-head-checkpoint,
else the JBU featup ships for it (jbu_efficientnet_lite0-stride32.pt) unless --jbu-checkpoint is given;
otherwise the stride-16 JBU serves the head through its guidance-only layers (the kernels depend on the
image, not the features), with an identity fixup. Resize-conv has channel-specific weights and no stride-32 version.

    python bench/evaluate.py --out featup-out/eval
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from collections.abc import Callable

import fsspec
import torch
from torch import nn

from featup.backbones import MissingWeightsError, load_backbone
from featup.data.offline import (
    FASHION_CLASSES,
    depth_scenes,
    fashion_mosaics,
    photo_crops,
)
from featup.eval import (
    CompareSettings,
    compare_upsamplers,
    markdown_table,
    write_report,
)
from featup.eval.features import image_tensor
from featup.training import fit_implicit, fit_implicit_batch, train_jbu
from featup.upsamplers import create_upsampler, load_upsampler


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="featup-out/eval", help="folder or fsspec URL for reports and checkpoints")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--seg-train", type=int, default=48)
    p.add_argument("--seg-test", type=int, default=16)
    p.add_argument("--depth-train", type=int, default=32)
    p.add_argument("--depth-test", type=int, default=12)
    p.add_argument("--cam-crops", type=int, default=8, help="crops per offline photo (9 photos): CAM test images")
    p.add_argument("--cam-output-size", type=int, default=112, help="upsampled size of the 1280-channel CAM maps")
    p.add_argument("--protocol", default="own", choices=["own", "full"], help="probe protocol of the main table")
    p.add_argument("--probe-steps", type=int, default=300)
    p.add_argument("--pixels-per-image", type=int, default=2048, help="pixels sampled per image to train a probe")
    p.add_argument("--jbu-checkpoint", help="a trained JBU for efficientnet_lite0 (stride 16)")
    p.add_argument("--jbu-head-checkpoint", help="a trained JBU for the stride-32 head, for the CAMs")
    p.add_argument("--resize-conv-checkpoint", help="a trained resize-conv for efficientnet_lite0 (stride 16)")
    p.add_argument("--train-steps", type=int, default=60, help="multi-view training steps when no checkpoint")
    p.add_argument("--train-size", type=int, default=112, help="image size for that training")
    p.add_argument("--train-batch", type=int, default=2)
    p.add_argument("--train-jitters", type=int, default=3)
    p.add_argument("--implicit-images", type=int, default=8, help="test images per task for the implicit tables")
    p.add_argument("--implicit-train", type=int, default=8,
                   help="train images per probe task for the implicit own-probe table (each one is a fit)")
    p.add_argument("--implicit-batch", type=int, default=8, help="images fitted at once (fit_implicit_batch)")
    p.add_argument("--implicit-recipe", default="featup", help="featup.training.implicit.RECIPES name")
    p.add_argument("--implicit-steps", type=int, help="override the recipe's fitting steps")
    p.add_argument("--implicit-views", type=int, help="override the recipe's view pool")
    p.add_argument("--implicit-views-per-step", type=int, help="override the recipe's views per step")
    p.add_argument("--implicit-options", type=json.loads, default={},
                   help='JSON of any other recipe fields to override, e.g. \'{"guide_iterations": 3}\'')
    p.add_argument("--skip", nargs="*", default=[], choices=["main", "transfer", "implicit", "implicit-own"],
                   help="tables to leave out")
    return p.parse_args()


def learned_upsampler(kind: str, given: str | None, backbone: nn.Module, images: list[torch.Tensor],
                      args: argparse.Namespace) -> tuple[nn.Module, str]:
    """A trained ``kind`` upsampler for ``backbone`` and where it came from (given, shipped, or trained here)."""
    if given:
        return load_upsampler(kind, backbone=backbone.name, checkpoint=given), f"checkpoint {given}"
    try:
        return load_upsampler(kind, backbone=backbone.name), "the checkpoint featup ships"
    except MissingWeightsError:
        pass
    cache = f"{args.out.rstrip('/')}/checkpoints/{kind}_{backbone.name}_s{args.train_steps}.pt"
    fs, path = fsspec.core.url_to_fs(cache)
    if not fs.exists(path):
        start = time.perf_counter()
        train_jbu(backbone, images, args.train_steps, upsampler=create_upsampler(kind, dim=backbone.dim),
                  batch_size=args.train_batch, num_jitters=args.train_jitters, image_size=args.train_size,
                  seed=args.seed, checkpoint=cache, checkpoint_every=10, resume=True)
        print(f"trained {kind} in {time.perf_counter() - start:.0f} s")
    how = (f"trained here: {args.train_steps} multi-view steps, batch {args.train_batch} × "
           f"{args.train_jitters} jitters at {args.train_size} px on {len(images)} images")
    return load_upsampler(kind, backbone=backbone.name, checkpoint=cache), how


def jbu_for(trained: nn.Module, given: bool, head: str | None = None) -> Callable[[nn.Module], nn.Module]:
    """The JBU for each backbone: ``trained`` for its own tap; for another, the ``head`` checkpoint, else the one
    featup ships for it (unless a checkpoint was ``given``), else ``trained``'s guidance-only layers with an
    identity fixup."""
    def for_backbone(backbone: nn.Module) -> nn.Module:
        if backbone.dim == trained.dim:
            return trained
        if head is not None:
            return load_upsampler("jbu", backbone=backbone.id, checkpoint=head)
        if not given:
            try:
                return load_upsampler("jbu", backbone=backbone.id)
            except MissingWeightsError:
                pass
        moved = create_upsampler("jbu", dim=backbone.dim, num_layers=trained.num_layers, radius=trained.radius)
        for mine, theirs in zip(moved.layers, trained.layers):
            mine.load_state_dict(theirs.state_dict())
        nn.init.zeros_(moved.fixup_proj[1].weight)
        nn.init.zeros_(moved.fixup_proj[1].bias)
        return moved.eval()

    return for_backbone


def only_for(module: nn.Module) -> Callable[[nn.Module], nn.Module | None]:
    """``module`` for the backbone whose channels it was built for, nothing for the others."""
    return lambda backbone: module if backbone.dim == module.conv.in_channels else None


class ImplicitFits:
    """Per-image implicit upsampling: fit to each image (featup.training), then render.

    Called with a backbone it gives the upsample function ``compare_upsamplers`` expects. Fits are kept per
    (backbone, image), so a test image shared by two tables is fitted once, and ``prefit`` fits many
    images as one batch (``fit_implicit_batch``: one MLP per image, shared matrix products) beforehand.
    """

    def __init__(self, args: argparse.Namespace):
        self.recipe, self.seed = args.implicit_recipe, args.seed
        self.overrides = {key: value for key, value in (("steps", args.implicit_steps), ("views", args.implicit_views),
                                                        ("views_per_step", args.implicit_views_per_step))
                          if value is not None} | args.implicit_options
        self.fits: dict[tuple[str, bytes], nn.Module] = {}

    def prefit(self, backbone: nn.Module, samples: list[dict], size: int, batch: int) -> None:
        """Fit the samples' images as compare_upsamplers will present them, ``batch`` at a time."""
        images = torch.cat([image_tensor(image_tensor(s["image"]), size) for s in samples])
        todo = [image for image in images if (backbone.id, image[None].numpy().tobytes()) not in self.fits]
        for start in range(0, len(todo), batch):
            chunk = torch.stack(todo[start:start + batch])
            models = fit_implicit_batch(chunk, backbone, recipe=self.recipe, seed=self.seed, progress=False,
                                        **self.overrides)
            for image, model in zip(chunk, models, strict=True):
                self.fits[(backbone.id, image[None].numpy().tobytes())] = model

    def __call__(self, backbone: nn.Module) -> Callable:
        def fit_and_render(features: torch.Tensor, image01: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
            key = (backbone.id, image01.numpy().tobytes())
            if key not in self.fits:
                print(f"implicit: an image of {backbone.id} was not prefitted; fitting it alone", flush=True)
                self.fits[key] = fit_implicit(image01, backbone, recipe=self.recipe, seed=self.seed, progress=False,
                                              **self.overrides)
            with torch.no_grad():
                return self.fits[key](features, image01, size)

        return fit_and_render


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    dense = load_backbone("efficientnet_lite0")
    head = load_backbone("efficientnet_lite0", tap="stride32")
    size = args.image_size
    seg_train = list(fashion_mosaics(args.seg_train, seed=args.seed, split="train", size=size))
    seg_test = list(fashion_mosaics(args.seg_test, seed=args.seed, split="test", size=size))
    depth_train = list(depth_scenes(args.depth_train, seed=args.seed, split="train", size=size))
    depth_test = list(depth_scenes(args.depth_test, seed=args.seed, split="test", size=size))
    cam_images = list(photo_crops(args.cam_crops, seed=args.seed, size=size))
    # Learned upsamplers see no labels and no test image: photo crops (other seed) and the train splits.
    unlabelled = [image_tensor(s["image"])[0] for s in
                  [*photo_crops(4, seed=args.seed + 1, size=size), *seg_train, *depth_train]]

    jbu, jbu_source = learned_upsampler("jbu", args.jbu_checkpoint, dense, unlabelled, args)
    conv, conv_source = learned_upsampler("resize_conv", args.resize_conv_checkpoint, dense, unlabelled, args)
    upsamplers = {"lowres": None, "bilinear": load_upsampler("bilinear"),
                  "bilateral": create_upsampler("bilateral").eval(), "resize-conv": only_for(conv),
                  "jbu": jbu_for(jbu, given=args.jbu_checkpoint is not None, head=args.jbu_head_checkpoint)}
    common = {"image_size": size, "cam_output_size": args.cam_output_size, "seg_steps": args.probe_steps,
              "depth_steps": args.probe_steps, "pixels_per_image": args.pixels_per_image, "seed": args.seed}
    head_note = f", head JBU: checkpoint {args.jbu_head_checkpoint}" if args.jbu_head_checkpoint else ""
    notes = (f"EfficientNet-Lite0 (ImageNet weights): stride-16 tap (112 ch) for probes, stride-32 head (1280 ch) "
             f"+ its classifier for CAMs. JBU: {jbu_source}{head_note}. resize-conv: {conv_source}. "
             f"Run on {platform.node() or 'this machine'} ({os.cpu_count()} CPUs, torch {torch.__version__}).")
    results = {"args": vars(args), "jbu": jbu_source, "resize_conv": conv_source}
    from timm.data import (
        ImageNetInfo,  # after featup, whose import lets timm load next to a CPU torch
    )

    imagenet = [ImageNetInfo().index_to_description(i).split(",")[0] for i in range(1000)]

    probes = {"seg_train": seg_train, "seg_test": seg_test, "depth_train": depth_train, "depth_test": depth_test}
    tables = [] if "main" in args.skip else [("main", args.protocol, upsamplers, {**probes, "cam_images": cam_images})]
    if "transfer" not in args.skip:
        tables.append(("transfer", "lowres", upsamplers, probes))
    if args.implicit_images > 0:
        k, n = args.implicit_images, args.implicit_train
        fits = ImplicitFits(args)
        with_implicit = {**upsamplers, "implicit": fits}
        subset = {**probes, "seg_test": seg_test[:k], "depth_test": depth_test[:k],
                  "cam_images": [s for s in cam_images if s["meta"]["index"] == 0][:k]}
        start = time.perf_counter()
        own = "implicit-own" not in args.skip and n > 0
        fits.prefit(dense, [*seg_test[:k], *depth_test[:k], *((seg_train[:n] + depth_train[:n]) if own else [])],
                    size, args.implicit_batch)
        if "implicit" not in args.skip:
            fits.prefit(head, subset["cam_images"], size, args.implicit_batch)
        print(f"implicit: {len(fits.fits)} fits in {time.perf_counter() - start:.0f} s, "
              f"batches of {args.implicit_batch}", flush=True)
        if "implicit" not in args.skip:
            tables.append(("implicit", "lowres", with_implicit, subset))
        if own:
            # Own probes need implicit features of every training image: each is a fit, so fewer of them.
            tables.append(("implicit-own", "own", with_implicit,
                           {"seg_train": seg_train[:n], "seg_test": seg_test[:k], "depth_train": depth_train[:n],
                            "depth_test": depth_test[:k]}))

    for name, protocol, ups, datasets in tables:
        start = time.perf_counter()
        comparison = compare_upsamplers(dense, ups, num_classes=len(FASHION_CLASSES), class_names=FASHION_CLASSES,
                                        cam_backbone=head, cam_class_names=imagenet,
                                        settings=CompareSettings(**common, probe_protocol=protocol), **datasets)
        seconds = time.perf_counter() - start
        written = write_report(comparison, f"{args.out.rstrip('/')}/{name}", title=f"FeatUp evaluation: {name}",
                               notes=notes)
        print(f"\n## {name} ({seconds:.0f} s; images {comparison.counts})\n")
        print(markdown_table(comparison.rows))
        print("report:", written[0])
        results[name] = {"rows": comparison.rows, "counts": comparison.counts, "seconds": seconds,
                         "settings": dataclasses.asdict(comparison.settings)}
    with fsspec.open(f"{args.out.rstrip('/')}/results.json", "w", auto_mkdir=True) as f:
        json.dump(results, f, indent=2)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
