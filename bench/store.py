"""Feature-store throughput: zarr writes and reads vs raw fsspec I/O of the same bytes, local disk and S3.

    python bench/store.py                      # local disk + a moto S3 server started here on loopback
    python bench/store.py --samples 32 --size 224

For each target the same features (smooth, like upsampled backbone features) are written through
``FeatureStore`` shard writers and read back with ``to_dask().compute()``; the baseline writes and
reads the identical uncompressed bytes as one object per sample with fsspec (``pipe`` / ``cat``, which
s3fs runs concurrently). Ratios are zarr time / raw time in the same run (1.0 = no overhead).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from featup.data.manifest import Manifest, ShardInfo
from featup.io import filesystem
from featup.store import FeatureSpec, FeatureStore, create_feature_store


def smooth_features(n: int, channels: int, size: int, seed: int = 0) -> np.ndarray:
    """N×C×S×S float16 features: random 14×14 grids upsampled bilinearly (as smooth as real upsampled maps)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(n, channels, 14, 14, generator=g)
    return F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False).half().numpy()


@contextlib.contextmanager
def moto_s3() -> Iterator[dict]:
    """A moto_server on a free loopback port (stopped by PID on exit); yields s3fs storage options."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = os.path.join(os.path.dirname(sys.executable), "moto_server")
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        yield {"key": "bench", "secret": "bench", "endpoint_url": endpoint}
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait()


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` calls, after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def write_store(store: FeatureStore, feats: np.ndarray, batch: int) -> None:
    """Every shard through a shard writer, ``batch`` samples per write call (sample i has key k<i>)."""
    for shard in range(store.num_shards):
        keys = store.keys(shard)
        with store.shard_writer(shard, redo=True) as w:
            for a in range(0, len(keys), batch):
                part = keys[a : a + batch]
                first = int(part[0][1:])
                w.write(part, feats[first : first + len(part)])


def run_target(name: str, root: str, so: dict | None, feats: np.ndarray, args: argparse.Namespace) -> list[dict]:
    n, c, s, _ = feats.shape
    keys = [f"k{i:05d}" for i in range(n)]
    per_shard = args.shard_size
    shards = [
        ShardInfo(f"shard-{i:06d}.tar", len(keys[j : j + per_shard]), 0, tuple(keys[j : j + per_shard]))
        for i, j in enumerate(range(0, n, per_shard))
    ]
    manifest = Manifest("bench", shards)
    fs, base = filesystem(root, so)
    rows = []
    for compression in args.compressions:
        spec = FeatureSpec(
            "bench", "synthetic", f"run-{uuid.uuid4().hex[:6]}", channels=c, size=s, compression=compression
        )
        store = create_feature_store(root, spec, manifest, storage_options=so)
        write_s = timed(functools.partial(write_store, store, feats, args.batch), args.repeats)
        read_s = timed(lambda store=store: store.to_dask().compute(), args.repeats)
        np.testing.assert_array_equal(store.to_dask().compute(), feats)
        stored = sum(fs.size(p) for p in fs.find(f"{base}/bench/synthetic/{spec.upsampler}/features"))
        rows.append(
            {"target": name, "how": f"zarr ({compression})", "write": write_s, "read": read_s, "stored": stored}
        )

    raw_dir = f"{base}/raw-{uuid.uuid4().hex[:6]}"
    fs.makedirs(raw_dir, exist_ok=True)
    paths = [f"{raw_dir}/{k}" for k in keys]

    def write_raw() -> None:
        for a in range(0, n, args.batch):
            fs.pipe({p: feats[i].tobytes() for i, p in enumerate(paths[a : a + args.batch], start=a)})

    def read_raw() -> None:
        np.stack([np.frombuffer(b, np.float16).reshape(c, s, s) for b in fs.cat(paths).values()])

    raw_write, raw_read = timed(write_raw, args.repeats), timed(read_raw, args.repeats)
    rows.append({"target": name, "how": "raw fsspec", "write": raw_write, "read": raw_read, "stored": feats.nbytes})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--channels", type=int, default=384)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--shard-size", type=int, default=8, help="samples per shard (one shard writer each)")
    parser.add_argument("--batch", type=int, default=4, help="samples per write call")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compressions", nargs="+", default=["none", "blosc-lz4", "blosc-zstd"])
    args = parser.parse_args()

    feats = smooth_features(args.samples, args.channels, args.size)
    mb = feats.nbytes / 1e6
    print(f"# {args.samples} samples × {args.channels} ch × {args.size}² float16 = {mb:.1f} MB per pass")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rows += run_target("local disk", tmp, None, feats, args)
    with moto_s3() as so:
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        filesystem(f"s3://{bucket}", so)[0].mkdir(bucket)
        rows += run_target("moto S3 (loopback)", f"s3://{bucket}", so, feats, args)

    print("\n| target | how | write MB/s | read MB/s | stored / raw bytes | write time vs raw | read time vs raw |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        raw = next(r for r in rows if r["target"] == row["target"] and r["how"] == "raw fsspec")
        print(
            f"| {row['target']} | {row['how']} | {mb / row['write']:.0f} | {mb / row['read']:.0f} | "
            f"{row['stored'] / feats.nbytes:.2f} | {row['write'] / raw['write']:.2f}× | "
            f"{row['read'] / raw['read']:.2f}× |"
        )


if __name__ == "__main__":
    main()
