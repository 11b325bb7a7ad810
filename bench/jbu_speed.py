"""JBU speed on the CPU: forward (what the precompute pipeline waits on) and a training step, old path vs new.

The old path is the JBU as featup shipped it before: range logits by a per-tap PyTorch loop (which
writes and sums B×key_dim×H×W products 49 times per layer, forward and backward) and the stack's 1×1
fixup on the full-resolution output. The new path computes the range logits with the compiled kernels
(``featup.ops.neighbour_products``) and runs the fixup on the low-res grid (exact: the layers are linear
and channel-blind). Both are timed in this one process, interleaved, with the backbone beside them.

    python bench/jbu_speed.py                 # forward: 112 channels → 224², batch 8
    python bench/jbu_speed.py --train         # plus train_jbu steps at batch 4 × 5 jitters, 224 px
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
import torch.nn.functional as F

from featup.backbones import load_backbone
from featup.eval.features import image_tensor
from featup.ops import adaptive_conv, neighbour_products
from featup.photos import sample_photos
from featup.upsamplers import JBUStack, create_upsampler
from featup.upsamplers.jbu import guidance_at, spatial_logits


def old_forward(stack: JBUStack, features: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """The JBU as it ran before: per-tap PyTorch range logits, full-resolution stack fixup."""
    guidance = stack.normalize(image)
    out, r = features, stack.radius
    for layer, size in zip(stack.layers, stack.stage_sizes(features.shape[-2:], image.shape[-2:]), strict=True):
        g = guidance_at(guidance, size)
        logits = neighbour_products(layer.range_proj(g), r, backend="torch")
        kernel = F.softmax(layer.range_temp.exp().clamp(1e-4, 1e4) * logits, 1)
        kernel = kernel * spatial_logits(layer.diameter, layer.sigma_spatial).exp()[:, None, None]
        kernel = kernel / kernel.sum(1, keepdim=True).clamp(1e-7)
        kernel = kernel + 0.1 * layer.fixup_proj(torch.cat([kernel, g], 1))
        hr = F.pad(F.interpolate(out, size=size, mode="bicubic", align_corners=False), [r] * 4, mode="reflect")
        out = adaptive_conv(hr, kernel.permute(0, 2, 3, 1).reshape(len(out), *size, layer.diameter, layer.diameter))
    return out + 0.1 * stack.fixup_proj(out)


def best_of(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--train", action="store_true", help="also time training steps (batch 4 × 5 jitters)")
    p.add_argument("--train-steps", type=int, default=3)
    args = p.parse_args()
    backbone = load_backbone("efficientnet_lite0")
    photos = list(sample_photos().values())
    images = torch.cat([image_tensor(photos[i % len(photos)], 224) for i in range(args.batch)])
    jbu = create_upsampler("jbu", dim=backbone.dim, range_kernel="dot").eval()
    print(f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}; efficientnet_lite0 "
          f"stride 16 ({backbone.dim} ch), batch {args.batch}, 224 px\n")
    with torch.no_grad():
        low = backbone(backbone.normalize(images))
        torch.testing.assert_close(jbu(low, images), old_forward(jbu, low, images), rtol=1e-4, atol=1e-4)
        t_backbone = best_of(lambda: backbone(backbone.normalize(images)), args.repeats)
        t_old = best_of(lambda: old_forward(jbu, low, images), args.repeats)
        t_new = best_of(lambda: jbu(low, images), args.repeats)
    per = 1e3 / args.batch
    print("| forward | ms per image | × backbone |\n|---|---:|---:|")
    for name, t in (("backbone", t_backbone), ("JBU, old path", t_old), ("JBU, new path", t_new)):
        print(f"| {name} | {t * per:.1f} | {t / t_backbone:.2f} |")
    print(f"\nnew / old forward: {t_new / t_old:.2f}")
    if args.train:
        train_steps(backbone, photos, args.train_steps)


def train_steps(backbone, photos, steps: int) -> None:
    """Seconds per train_jbu step at batch 4 × 5, 224 px, with the range logits of the old and the new path."""
    import featup.upsamplers.jbu as jbu_module
    from featup.training import train_jbu

    crops = [image_tensor(photo, 224)[0] for photo in photos]
    fast = jbu_module.neighbour_products
    results = {}
    for name in ("old path", "new path", "old path", "new path"):
        # The old path's other difference (fixup on the full-res output) is gone from forward_projected-free
        # training too; the range logits are the part that differs inside train_jbu.
        jbu_module.neighbour_products = ((lambda q, r, k=None: fast(q, r, k, backend="torch")) if name == "old path" else fast)
        start = time.perf_counter()
        _, history = train_jbu(backbone, crops, steps, batch_size=4, num_jitters=5, progress=False)
        results.setdefault(name, []).append((time.perf_counter() - start) / steps)
        results.setdefault(f"{name} loss", []).append(history[-1]["loss"])
    jbu_module.neighbour_products = fast
    old, new = min(results["old path"]), min(results["new path"])
    print(f"\n| train_jbu step, batch 4 × 5, 224 px | s/step |\n|---|---:|\n| old path | {old:.2f} |\n| new path | {new:.2f} |")
    print(f"\nnew / old step: {new / old:.2f}; final loss old {results['old path loss'][0]:.6f} vs new "
          f"{results['new path loss'][0]:.6f}")


if __name__ == "__main__":
    main()
