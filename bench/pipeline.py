"""Throughput of the precompute pipeline (shards → backbone → upsampler → zarr) against each stage alone.

Each stage is timed on its own over the same images (read/decode through the shard reader, the
backbone, the upsampler, the store write), then the whole pipeline (`featup.pipeline.precompute_shard`,
whose reading and writing overlap the model) is timed in the same run. Printed: images/s per stage,
the pipeline's images/s, its ratio to the slowest stage and to the backbone alone.

    python bench/pipeline.py --images 32 --size 224 --upsampler jbu
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time

import torch

from featup.backbones import load_backbone
from featup.data import ingest, open_shards, read_manifest
from featup.pipeline import featurize, pick_device, precompute_shard
from featup.store import FeatureSpec, create_feature_store
from featup.upsamplers import load_upsampler


def _rate(images: int, seconds: float) -> float:
    return images / max(seconds, 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--upsampler", default="jbu")
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model-threads", type=int, default=None,
                        help="CPU threads of the model inside the pipeline (default: torch's)")
    args = parser.parse_args()

    device = pick_device(args.device)
    root = tempfile.mkdtemp(prefix="featup-bench-")
    manifest = ingest("fashion_mosaics", "-", f"{root}/shards", n=args.images, size=args.size,
                      max_count=args.images, progress=False)
    backbone = load_backbone(args.backbone).to(device)
    upsampler = load_upsampler(args.upsampler, backbone=backbone.id, dim=backbone.dim).to(device)
    size = (args.size, args.size)

    start = time.perf_counter()
    images = [s["image"] for s in open_shards(f"{root}/shards", size=args.size)]
    read_s = time.perf_counter() - start
    batches = [torch.stack(images[i:i + args.batch_size]).to(device) for i in range(0, len(images), args.batch_size)]
    featurize(backbone, upsampler, batches[0], size)  # warm-up (kernel build, allocator)
    with torch.no_grad():
        start = time.perf_counter()
        lows = [backbone(backbone.normalize(b)) for b in batches]
        if device.type == "cuda":
            torch.cuda.synchronize()
        backbone_s = time.perf_counter() - start
        start = time.perf_counter()
        highs = [upsampler(low, b, size).cpu() for low, b in zip(lows, batches)]
        upsample_s = time.perf_counter() - start

    spec = FeatureSpec(dataset="bench", backbone=backbone.id, upsampler=args.upsampler, channels=backbone.dim,
                       size=size)
    store = create_feature_store(f"{root}/write-alone", spec, read_manifest(f"{root}/shards"))
    keys = store.keys(0)
    start = time.perf_counter()
    with store.shard_writer(0) as writer:
        for i, high in enumerate(highs):
            writer.write(keys[i * args.batch_size:i * args.batch_size + len(high)], high)
    write_s = time.perf_counter() - start

    store = create_feature_store(f"{root}/pipeline", spec, read_manifest(f"{root}/shards"))
    report = precompute_shard(store, 0, backbone, upsampler, batch_size=args.batch_size, device=str(device),
                              num_workers=args.num_workers, model_threads=args.model_threads)
    n = len(images)
    stages = {"read/decode": read_s, "backbone": backbone_s, "upsample": upsample_s, "write": write_s}
    slowest = min(_rate(n, s) for s in stages.values())
    pipeline = _rate(report.times.images, report.times.total)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"device {device}; {n} images {args.size}², {args.backbone} + {args.upsampler}, batch {args.batch_size}; "
          f"model threads in the pipeline: {args.model_threads or torch.get_num_threads()}")
    print("| stage | images/s alone |\n|---|---|")
    for name, seconds in stages.items():
        print(f"| {name} | {_rate(n, seconds):.1f} |")
    t = report.times
    print(f"| **pipeline** (inside it: read wait {t.read:.2f}s, backbone {t.backbone:.2f}s, upsample {t.upsample:.2f}s, "
          f"write {t.write:.2f}s in a thread) | **{pipeline:.1f}** |")
    print(f"pipeline / slowest stage = {pipeline / slowest:.2f}; "
          f"pipeline / (backbone + upsample in sequence) = {pipeline / _rate(n, backbone_s + upsample_s):.2f}; "
          f"pipeline / backbone alone = {pipeline / _rate(n, backbone_s):.2f}")


if __name__ == "__main__":
    main()
