"""JBU speed on the CPU, old path vs new side by side: the forward (what the precompute pipeline waits on) and a
train_jbu step, each with its ratio, the backbone beside them, and the peak memory of each path.

The old path is the JBU as featup first shipped it (``old_forward``): range logits by a per-tap PyTorch loop,
ATen's bicubic upsampling and reflect padding, the B×d²×H×W filters built by PyTorch ops (softmax over dim 1, NCHW
1×1 convolutions) and transposed for the compiled adaptive conv, the stack's 1×1 fixup on the full-resolution
output. The new path is ``JBUStack`` as it is now: without autograd every layer is one fused compiled pass
(``featup.ops.jbu_layer``); in training the layers are composed from the compiled range logits, the padded-bicubic
kernel and pixel-major filters. Both are timed in this one process, interleaved, best of ``--repeats``; the
training step runs the same seeded ``train_jbu`` with ``JBUStack.forward`` swapped for ``old_forward``, and the
two final losses must agree. Peak memory is measured in a fresh process per path: the peak RSS above the RSS
just before the call.

    python bench/jbu_speed.py                 # forward: 112 channels → 224², batch 8
    python bench/jbu_speed.py --train         # plus train_jbu steps at batch 4 × 5 jitters, 224 px
    python bench/jbu_speed.py --threads 1     # one core each: the ratios a loaded machine disturbs least
    python bench/jbu_speed.py --back-projection   # plus the shipped JBUs with and without a back-projection step
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from featup.backbones import load_backbone
from featup.eval.features import image_tensor
from featup.ops import adaptive_conv, neighbour_products
from featup.photos import sample_photos
from featup.upsamplers import JBUStack, create_upsampler
from featup.upsamplers.jbu import guidance_at, spatial_logits

PATHS = ("old", "new")


def old_forward(stack: JBUStack, features: torch.Tensor, image: torch.Tensor, output_size=None) -> torch.Tensor:
    """The JBU as it first shipped: per-tap PyTorch range logits, NCHW filters, full-resolution stack fixup.

    The fixup's Dropout2d mask is drawn first, where the new path draws it, so that both paths see the same random
    numbers in train mode and the training losses can be compared.
    """
    dropout, _ = stack.fixup_proj
    keep = torch.ones(len(features), stack.dim, 1, 1)
    if dropout.training and dropout.p > 0:
        keep = keep.bernoulli_(1 - dropout.p).div_(1 - dropout.p)
    guidance = stack.normalize(image)
    out, r = features, stack.radius
    for layer, size in zip(stack.layers, stack.stage_sizes(features.shape[-2:], image.shape[-2:]), strict=True):
        g = guidance_at(guidance, size)
        queries = layer.range_proj(g)
        if layer.range_mode == "distance":
            keys = torch.cat([queries, -0.5 * queries.square().sum(1, keepdim=True)], 1)
            logits = neighbour_products(torch.cat([queries, torch.ones_like(queries[:, :1])], 1), r, keys,
                                        backend="torch")
        else:
            logits = neighbour_products(queries, r, backend="torch")
        kernel = F.softmax(layer.range_temp.exp().clamp(1e-4, 1e4) * logits, 1)
        kernel = kernel * spatial_logits(layer.diameter, layer.sigma_spatial).exp()[:, None, None]
        kernel = kernel / kernel.sum(1, keepdim=True).clamp(1e-7)
        kernel = kernel + 0.1 * layer.fixup_proj(torch.cat([kernel, g], 1))
        hr = F.pad(F.interpolate(out, size=size, mode="bicubic", align_corners=False), [r] * 4, mode="reflect")
        out = adaptive_conv(hr, kernel.permute(0, 2, 3, 1).reshape(len(out), *size, layer.diameter, layer.diameter))
    return out + 0.1 * stack.fixup_proj[1](out * keep)


@contextlib.contextmanager
def path(name: str) -> Iterator[None]:
    """Run JBU stacks on the old or the new path inside the block."""
    if name == "new":
        yield
        return
    new_forward = JBUStack.forward
    JBUStack.forward = old_forward
    try:
        yield
    finally:
        JBUStack.forward = new_forward


def best_of(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def setup(batch: int):
    backbone = load_backbone("efficientnet_lite0")
    photos = list(sample_photos().values())
    images = torch.cat([image_tensor(photos[i % len(photos)], 224) for i in range(batch)])
    torch.manual_seed(0)
    jbu = create_upsampler("jbu", dim=backbone.dim, range_kernel="dot").eval()
    return backbone, photos, images, jbu


def rss_bytes(field: str) -> int:
    """VmRSS (now) or VmHWM (peak) of this process, from /proc/self/status."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(f"{field}:"))


def peak_above(fn) -> int:
    """Peak RSS during fn() above the RSS just before it.

    The peak (VmHWM) is reset to the current RSS first. ru_maxrss would not do: Linux carries it over from the
    parent across fork and exec, so a child started by a big process reports the parent's size.
    """
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = rss_bytes("VmRSS")
    fn()
    return max(0, rss_bytes("VmHWM") - before)


def measure_memory(kind: str, name: str, inputs: str) -> int:
    """In this (fresh) process: the peak memory of one forward or one training step on one path.

    The forward's inputs come from a file, so that no backbone pass has set a higher peak before.
    """
    if kind == "forward":
        low, images = torch.load(inputs)
        torch.manual_seed(0)
        jbu = create_upsampler("jbu", dim=low.shape[1], range_kernel="dot").eval()
        with path(name), torch.no_grad():
            return peak_above(lambda: jbu(low, images))
    from featup.training import train_jbu

    backbone = load_backbone("efficientnet_lite0")
    crops = [image_tensor(photo, 224)[0] for photo in sample_photos().values()]
    with path(name):
        return peak_above(lambda: train_jbu(backbone, crops, 1, batch_size=4, num_jitters=5, progress=False))


def memory_in_subprocess(kind: str, name: str, inputs: str = "") -> float:
    """Peak MiB of one forward / training step on one path, measured in a fresh process."""
    out = subprocess.run([sys.executable, __file__, "--memory", kind, name, inputs], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak"] / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--train", action="store_true", help="also time training steps (batch 4 × 5 jitters)")
    p.add_argument("--train-steps", type=int, default=2)
    p.add_argument("--back-projection", action="store_true",
                   help="also time the shipped JBUs (stride 16, stride-32 head) with and without a back-projection step")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's); 1 compares per-core work, which "
                   "other jobs on a shared machine disturb less than the parallel run")
    p.add_argument("--memory", nargs=3, metavar=("KIND", "PATH", "INPUTS"), help=argparse.SUPPRESS)  # in the child
    args = p.parse_args()
    if args.memory:
        print(json.dumps({"peak": measure_memory(*args.memory)}))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    backbone, photos, images, jbu = setup(args.batch)
    print(f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}; efficientnet_lite0 "
          f"stride 16 ({backbone.dim} ch), batch {args.batch}, 224 px\n")
    with torch.no_grad():
        low = backbone(backbone.normalize(images))
        with path("old"):
            expected = jbu(low, images)
        torch.testing.assert_close(jbu(low, images), expected, rtol=1e-4, atol=1e-4)
        t_backbone = best_of(lambda: backbone(backbone.normalize(images)), args.repeats)
        times: dict[str, list[float]] = {}
        for name in PATHS * args.repeats:  # interleaved, so that load from other processes hits both alike
            with path(name):
                times.setdefault(name, []).append(best_of(lambda: jbu(low, images), 1))
    with tempfile.TemporaryDirectory() as tmp:
        torch.save((low, images), f"{tmp}/inputs.pt")
        memory = {name: memory_in_subprocess("forward", name, f"{tmp}/inputs.pt") for name in PATHS}
    per = 1e3 / args.batch
    print("| forward | ms per image | × backbone | peak memory (MiB) |\n|---|---:|---:|---:|")
    print(f"| backbone | {t_backbone * per:.1f} | 1.00 | |")
    for name in PATHS:
        t = min(times[name])
        print(f"| JBU, {name} path | {t * per:.1f} | {t / t_backbone:.2f} | {memory[name]:.0f} |")
    print(f"\nnew / old forward: {min(times['new']) / min(times['old']):.3f}")
    if args.train:
        train_steps(backbone, photos, args.train_steps)
    if args.back_projection:
        back_projection_cost(images, args.repeats)


def back_projection_cost(images: torch.Tensor, repeats: int) -> None:
    """ms per image of each shipped JBU without and with a full back-projection step, beside its backbone.

    Stride 16 (14×14 cells < 112 channels) pays a second pass; the 1280-channel head pools through its 49 cells. The
    head runs on 2 images: its output at batch 8 is 2 GB, whose page faults swamp the timing.
    """
    from featup.upsamplers import load_upsampler

    print("\n| forward, 224 px | batch | backbone ms | JBU ms, no step | with a step | step / none |")
    print("|---|---:|---:|---:|---:|---:|")
    for tap, batch in ((None, images[:8]), ("stride32", images[:2])):
        per = 1e3 / len(batch)
        backbone = load_backbone("efficientnet_lite0", tap=tap)
        plain, stepped = (load_upsampler("jbu", backbone=backbone.id, back_projection=step) for step in (0.0, 1.0))
        with torch.no_grad():
            low = backbone(backbone.normalize(batch))
            t_backbone = best_of(lambda: backbone(backbone.normalize(batch)), repeats)
            times: dict[str, list[float]] = {}
            for name, jbu in [("none", plain), ("step", stepped)] * repeats:  # interleaved
                times.setdefault(name, []).append(best_of(lambda: jbu(low, batch), 1))
        none, step = min(times["none"]), min(times["step"])
        print(f"| {backbone.id} ({backbone.dim} ch) | {len(batch)} | {t_backbone * per:.1f} | {none * per:.1f} | "
              f"{step * per:.1f} | {step / none:.2f} |")


def train_steps(backbone, photos, steps: int) -> None:
    """Seconds per train_jbu step at batch 4 × 5, 224 px, on both paths, interleaved; the losses must agree."""
    from featup.training import train_jbu

    crops = [image_tensor(photo, 224)[0] for photo in photos]
    seconds: dict[str, list[float]] = {}
    losses: dict[str, float] = {}
    for name in PATHS * 2:
        with path(name):
            start = time.perf_counter()
            _, history = train_jbu(backbone, crops, steps, batch_size=4, num_jitters=5, progress=False)
            seconds.setdefault(name, []).append((time.perf_counter() - start) / steps)
            losses[name] = history[-1]["loss"]
    memory = {name: memory_in_subprocess("train", name) for name in PATHS}
    print("\n| train_jbu step, batch 4 × 5, 224 px | s/step | peak memory (MiB) |\n|---|---:|---:|")
    for name in PATHS:
        print(f"| {name} path | {min(seconds[name]):.2f} | {memory[name]:.0f} |")
    print(f"\nnew / old step: {min(seconds['new']) / min(seconds['old']):.3f}; final loss after {steps} steps: old "
          f"{losses['old']:.6f}, new {losses['new']:.6f}")
    assert abs(losses["old"] - losses["new"]) <= 1e-4 * abs(losses["old"]), "the two paths train differently"


if __name__ == "__main__":
    main()
