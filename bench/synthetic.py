"""Proof that FeatUp training works, on a task whose true high-res features are known; and training timings.

Default mode: train a JBU stack on synthetic shape images (featup.synthetic), fit the implicit model to
each held-out image, and score bilinear, JBU and implicit upsampling against the true full-resolution
features (cosine similarity and PSNR). Prints a markdown table.

``--recipes``: implicit fitting with the published recipe (1200 steps of 10 views from a pool of 3000,
NAdam 2e-3, its window layout) against featup's default recipe, on the same images: quality, the
training reconstruction MSE over the last 20 steps, and time per image.

``--timing BACKBONE``: seconds per JBU training step (batch 4 × 5 jitters) and per implicit fit at
224 px for a real backbone (random weights unless real ones are available offline).

``--ops``: forward + backward time of featup's attention downsampler against the published formulation
(unfold every window with its channels) on the implicit fit's shapes, 224 px → 14×14, k 29, stride 15.

    python bench/synthetic.py
    python bench/synthetic.py --recipes --image-size 64 --stride 4
    python bench/synthetic.py --timing vit_s16 --timing-steps 3
    python bench/synthetic.py --ops
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch
import torch.nn.functional as F

from featup.downsamplers import AttentionDownsampler, gaussian_blur
from featup.synthetic import SyntheticBackbone, compare_on_synthetic, feature_metrics, synthetic_images
from featup.training import fit_implicit, train_jbu

PUBLISHED_IMPLICIT = {"steps": 1200, "views": 3000, "views_per_step": 10, "lr": 2e-3, "lr_decay": False,
                      "windows": "published"}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image-size", type=int, default=112)
    p.add_argument("--stride", type=int, default=8, help="the synthetic backbone's stride (patch size)")
    p.add_argument("--dim", type=int, default=32, help="the synthetic backbone's channels")
    p.add_argument("--train-images", type=int, default=64)
    p.add_argument("--test-images", type=int, default=4)
    p.add_argument("--jbu-steps", type=int, default=300)
    p.add_argument("--jbu-layers", type=int, default=4)
    p.add_argument("--jbu-lr", type=float, default=5e-3, help="peak of the cosine learning-rate schedule")
    p.add_argument("--jbu-batch", type=int, default=4)
    p.add_argument("--jbu-jitters", type=int, default=5)
    p.add_argument("--implicit-images", type=int, default=None, help="fit implicit on the first N test images")
    p.add_argument("--implicit-steps", type=int, default=None, help="default: fit_implicit's")
    p.add_argument("--implicit-views", type=int, default=None, help="default: fit_implicit's")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--recipes", action="store_true", help="compare implicit recipes instead")
    p.add_argument("--timing", metavar="BACKBONE", help="time training with this backbone at 224 px instead")
    p.add_argument("--timing-steps", type=int, default=3, help="JBU steps timed after one warm-up step")
    p.add_argument("--ops", action="store_true", help="time the attention downsampler against the published one")
    p.add_argument("--ops-views", type=int, default=4, help="views per call in --ops")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args()


def machine() -> str:
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch "
            f"{torch.__version__} with {torch.get_num_threads()} threads, {device}")


def pad_pixels(args: argparse.Namespace, published: int) -> int:
    """The published jitter padding (px at 224) scaled to this image size."""
    return max(1, round(published * args.image_size / 224))


def proof(args: argparse.Namespace) -> dict:
    implicit = {"max_pad": pad_pixels(args, 30)}
    if args.implicit_steps is not None:
        implicit["steps"] = args.implicit_steps
    if args.implicit_views is not None:
        implicit["views"] = args.implicit_views
    results = compare_on_synthetic(
        image_size=args.image_size, stride=args.stride, dim=args.dim, train_images=args.train_images,
        test_images=args.test_images, jbu_steps=args.jbu_steps, jbu_layers=args.jbu_layers,
        jbu_options={"lr": args.jbu_lr, "lr_decay": True, "batch_size": args.jbu_batch,
                     "num_jitters": args.jbu_jitters, "max_pad": pad_pixels(args, 20)},
        implicit_images=args.implicit_images, implicit_options=implicit, seed=args.seed,
        progress=not args.no_progress)
    rows = ["| upsampler | cosine ↑ | PSNR (dB) ↑ | time |", "|---|---|---|---|"]
    for name, r in results.items():
        timing = ""
        if name == "jbu":
            timing = f"{r['train_seconds']:.0f} s training ({r['step_seconds']:.2f} s/step)"
        elif name == "implicit":
            timing = f"{r['train_seconds']:.0f} s fit per image"
        rows.append(f"| {name} | {r['cosine']:.4f} | {r['psnr']:.2f} | {timing} |")
    print("\n".join(rows))
    return results


def recipes(args: argparse.Namespace) -> dict:
    backbone = SyntheticBackbone(args.dim, args.stride, seed=args.seed)
    test = synthetic_images(args.test_images, args.image_size, seed=args.seed + 2)
    truth = backbone.true_features(test)
    with torch.no_grad():
        low = backbone(backbone.normalize(test))
    count = args.implicit_images or args.test_images
    ours = {}
    if args.implicit_steps is not None:
        ours["steps"] = args.implicit_steps
    if args.implicit_views is not None:
        ours["views"] = args.implicit_views
    results = {"bilinear": feature_metrics(F.interpolate(low[:count], size=truth.shape[-2:], mode="bilinear",
                                                         align_corners=False), truth[:count])}
    for name, options in (("featup default", ours), ("published recipe", PUBLISHED_IMPLICIT)):
        rendered, mses = [], []
        start, cpu_start = time.perf_counter(), time.process_time()
        for i in range(count):
            log: list[dict] = []
            model = fit_implicit(test[i], backbone, seed=args.seed + i, max_pad=pad_pixels(args, 30),
                                 progress=not args.no_progress, log=log.append, **options)
            tail = log[-20:]
            mses.append(sum(r["mse"] for r in tail) / max(len(tail), 1))
            with torch.no_grad():
                rendered.append(model(low[i:i + 1], test[i:i + 1]))
        results[name] = {**feature_metrics(torch.cat(rendered), truth[:count]),
                         "mse": sum(mses) / count,
                         "seconds_per_image": (time.perf_counter() - start) / count,
                         "cpu_seconds_per_image": (time.process_time() - cpu_start) / count}
    rows = ["| implicit recipe | cosine ↑ | PSNR (dB) ↑ | final training MSE ↓ | wall s / image | CPU s / image |",
            "|---|---|---|---|---|---|"]
    for name, r in results.items():
        extra = ("| – | – | – |" if name == "bilinear" else
                 f"| {r['mse']:.4f} | {r['seconds_per_image']:.1f} | {r['cpu_seconds_per_image']:.1f} |")
        rows.append(f"| {name} | {r['cosine']:.4f} | {r['psnr']:.2f} {extra}")
    print("\n".join(rows))
    for clock in ("seconds_per_image", "cpu_seconds_per_image"):
        ratio = results["published recipe"][clock] / results["featup default"][clock]
        print(f"featup default: {ratio:.1f}× less {clock.replace('_per_image', '').replace('_', ' ')} per image "
              "than the published recipe (same run)")
    return results


def timing(args: argparse.Namespace) -> dict:
    from featup.backbones import MissingWeightsError, load_backbone

    try:
        backbone, weights = load_backbone(args.timing), "real weights"
    except MissingWeightsError:
        backbone, weights = load_backbone(args.timing, pretrained=False), "random weights"
    images = synthetic_images(8, 224, seed=args.seed)
    step_times: list[float] = []
    last = [time.perf_counter()]

    def tick(_: dict) -> None:
        now = time.perf_counter()
        step_times.append(now - last[0])
        last[0] = now

    train_jbu(backbone, images, 1 + args.timing_steps, image_size=224, progress=not args.no_progress, log=tick,
              seed=args.seed)
    jbu_step = sum(step_times[1:]) / max(len(step_times) - 1, 1)
    options = {}
    if args.implicit_steps is not None:
        options["steps"] = args.implicit_steps
    if args.implicit_views is not None:
        options["views"] = args.implicit_views
    start = time.perf_counter()
    fit_implicit(images[0], backbone, seed=args.seed, progress=not args.no_progress, **options)
    fit = time.perf_counter() - start
    results = {"backbone": f"{backbone.name} ({weights}, {backbone.dim} channels, stride {backbone.stride})",
               "jbu_step_seconds": jbu_step, "implicit_fit_seconds": fit, "implicit_options": options}
    print(f"| backbone | JBU training step (batch 4 × 5 jitters, 224 px) | implicit fit per image (224 px) |\n"
          f"|---|---|---|\n| {results['backbone']} | {jbu_step:.1f} s | {fit:.0f} s |")
    return results


def published_attention(d: AttentionDownsampler, hr: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The published AttentionDownsampler's computation (no random mask): unfold windows with channels."""
    b, c = hr.shape[:2]
    k = d.kernel_size
    x = gaussian_blur(hr)
    patches = F.unfold(x, k, stride=d.stride).reshape(b, c, k * k, *size).permute(0, 3, 4, 2, 1)
    logits = d.saliency(d.dropout(patches)).squeeze(-1)
    attention = torch.softmax(logits * d.w.flatten() + d.b.flatten(), -1)
    return torch.einsum("bhwpc,bhwp->bchw", patches, attention)


def ops(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    results = {}
    rows = ["| channels × views | published (unfold) | featup | speed-up |", "|---|---|---|---|"]
    for channels in (129, 31):
        d = AttentionDownsampler(channels, 29, 15)
        hr = torch.randn(args.ops_views, channels, 224, 224, requires_grad=True)
        seconds = {}
        for name, fn in (("published", lambda: published_attention(d, hr, (14, 14))),
                         ("featup", lambda: d(hr, (14, 14)))):
            fn().square().mean().backward()  # warm-up
            start = time.perf_counter()
            fn().square().mean().backward()
            seconds[name] = time.perf_counter() - start
        results[channels] = seconds
        rows.append(f"| {channels} × {args.ops_views} | {seconds['published']:.2f} s | {seconds['featup']:.2f} s | "
                    f"{seconds['published'] / seconds['featup']:.1f}× |")
    print("\n".join(rows))
    return results


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {machine()}\n")
    if args.ops:
        results = ops(args)
    elif args.timing:
        results = timing(args)
    else:
        results = recipes(args) if args.recipes else proof(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "machine": machine(), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
