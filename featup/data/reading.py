"""Read webdataset shards from local disk or any fsspec URL (``s3://…``) into tensors at a chosen size.

The reader is a ``webdataset.DataPipeline``: shard list → split by worker → fsspec opener and tar
grouping → decode. Items are decoded sample dicts or :class:`BadSample` records, so a bad image, a
damaged tar member or a truncated shard is reported (and the rest of the shard still read) instead of
ending the epoch. :func:`collate_samples` keeps the records in the batch (``batch["bad"]``), which is how
they reach the main process from DataLoader workers.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import re
import tarfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from webdataset.tariterators import base_plus_ext

from featup.data.images import (
    MIN_SIDE,
    ImageError,
    decode_depth,
    decode_label,
    decode_rgb,
)
from featup.data.manifest import read_manifest
from featup.data.samples import IGNORE_INDEX, BadSample
from featup.io import StorageOptions, TransientError, is_transient, open_read

# members webdataset skips: its own metadata (a leading __name__ file or folder)
_META = re.compile(r"__[^/]*__($|/)")
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "ppm", "bmp", "tif", "tiff")
Size = int | tuple[int, int]


def shard_urls(
    source: str | Sequence[str], *, shards: Sequence[int] | None = None, storage_options: StorageOptions = None
) -> list[str]:
    """Expand ``source`` into shard URLs.

    ``source`` is a dataset folder or ``manifest.json`` URL (its shards, in order), a ``.tar`` URL, a
    brace pattern (``s3://b/ds/shard-{000000..000011}.tar``) or a list of those. ``shards`` picks shards
    by index.
    """
    urls: list[str] = []
    for item in [source] if isinstance(source, str) else list(source):
        if item.endswith((".tar", ".tar.gz", ".tgz")) or "{" in item:
            urls.extend(wds.shardlists.expand_urls(item))
        else:
            urls.extend(read_manifest(item, storage_options=storage_options).shard_urls())
    if shards is not None:
        try:
            urls = [urls[i] for i in shards]
        except IndexError:
            raise IndexError(f"shard index out of range: {list(shards)} requested, {len(urls)} shards exist") from None
    if not urls:
        raise ValueError(f"no shards found in {source!r}")
    return urls


def iter_shard(url: str, *, storage_options: StorageOptions = None) -> Iterator[dict[str, Any] | BadSample]:
    """Raw samples (``__key__``, ``__url__`` and extension → bytes) of one shard; failures become BadSamples.

    An unreadable, missing or truncated shard yields the samples before the damage, then one BadSample for
    the sample it was in and one (key None) saying where the shard broke. A fault that passes (network,
    throttling, 5xx) is raised instead, so the shard is retried rather than recorded as damaged.
    """
    current: dict[str, Any] | None = None
    count = 0
    try:
        with open_read(url, storage_options) as stream, \
                tarfile.open(fileobj=stream, mode="r|*") as tar:
            for member in tar:
                # a member's header names its sample before its data is read: the sample before it is
                # then known to be whole, even when this member turns out to be cut
                prefix, suffix = base_plus_ext(member.name)
                if not member.isreg() or prefix is None or _META.match(member.name):
                    continue
                if current is not None and prefix != current["__key__"]:
                    yield current
                    count += 1
                    current = None
                if current is None:
                    current = {"__key__": prefix, "__url__": url}
                current[suffix.lower()] = tar.extractfile(member).read()
                tar.members = []  # a streamed tar need not remember what it has passed
        if current is not None:
            yield current
    except Exception as exc:  # a damaged or missing shard ends this shard, not the run
        if is_transient(exc):
            # unreachable storage is not damage: recording the samples as bad would make it permanent. A
            # TransientError survives the trip out of a DataLoader worker (which re-creates it from its message).
            raise TransientError(f"reading {url} failed: {type(exc).__name__}: {exc}") from exc
        if current is not None:
            yield BadSample(current["__key__"], url, f"sample cut short by a shard error: {exc}")
        reason = f"shard unreadable after {count} samples: {type(exc).__name__}: {exc}"
        yield BadSample(None, url, reason)


@dataclasses.dataclass(frozen=True)
class _OpenShards:
    """Pipeline stage: shard URL dicts in, raw samples and BadSamples out (picklable for workers)."""

    storage_options: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    def __call__(self, src: Iterable[dict[str, str]]) -> Iterator[dict[str, Any] | BadSample]:
        for item in src:
            yield from iter_shard(item["url"], storage_options=self.storage_options)


def decode_in_threads(raw: Iterable[Any], decode: Callable[[Any], Any], workers: int) -> Iterator[Any]:
    """``decode(item)`` for every item of ``raw``, by ``workers`` threads, yielded in order.

    Decoding and resizing images (Pillow) release the GIL, so threads decode in parallel; at most
    ``2 · workers`` items are read ahead, so a shard is never held in memory whole.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    with ThreadPoolExecutor(workers, thread_name_prefix="featup-decode") as pool:
        pending: collections.deque = collections.deque()
        for item in raw:
            pending.append(pool.submit(decode, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _as_hw(size: Size | None) -> tuple[int, int] | None:
    if size is None:
        return None
    h, w = (size, size) if isinstance(size, int) else size
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {size}")
    return int(h), int(w)


def _crop_box(src_hw: tuple[int, int], dst_hw: tuple[int, int], fit: str) -> tuple[float, float, float, float]:
    """The source box (left, top, right, bottom) that resizes onto ``dst_hw``."""
    (h0, w0), (h, w) = src_hw, dst_hw
    if fit == "stretch":
        return 0.0, 0.0, float(w0), float(h0)
    # keep the whole of the limiting side and centre the other: integer comparison, so the box never
    # pokes outside the image by a rounding error
    if h * w0 >= w * h0:
        ch, cw = float(h0), w * h0 / h
    else:
        ch, cw = h * w0 / w, float(w0)
    top, left = (h0 - ch) / 2, (w0 - cw) / 2
    return left, top, left + cw, top + ch


@dataclasses.dataclass(frozen=True)
class DecodeSample:
    """Turn a raw shard sample into tensors at ``size`` (H, W), or a BadSample saying why it cannot be used.

    ``fit="crop"`` scales the short side to the target and centre-crops (FeatUp's Resize + CenterCrop);
    ``fit="stretch"`` resizes without keeping the aspect ratio. Images are resized bilinearly with
    antialiasing, labels with nearest neighbour, depth with ``depth_interpolation``.
    """

    size: tuple[int, int] | None
    fit: str = "crop"
    depth_interpolation: str = "nearest"
    min_side: int = MIN_SIDE

    def __post_init__(self) -> None:
        if self.fit not in ("crop", "stretch"):
            raise ValueError(f"fit must be 'crop' or 'stretch', got {self.fit!r}")
        if self.depth_interpolation not in ("nearest", "bilinear"):
            raise ValueError(f"depth_interpolation must be 'nearest' or 'bilinear', got {self.depth_interpolation!r}")

    def __call__(self, raw: dict[str, Any] | BadSample) -> dict[str, Any] | BadSample:
        if isinstance(raw, BadSample):
            return raw
        key, url = raw["__key__"], raw.get("__url__", "")
        try:
            return self._decode(raw)
        except ImageError as exc:
            return BadSample(key, url, str(exc))
        except (ValueError, OSError) as exc:
            return BadSample(key, url, f"undecodable sample: {type(exc).__name__}: {exc}")

    def _decode(self, raw: dict[str, Any]) -> dict[str, Any]:
        ext = next((e for e in IMAGE_EXTENSIONS if e in raw), None)
        if ext is None:
            members = sorted(k for k in raw if not k.startswith("__"))
            raise ImageError(f"no image in sample (members: {members})")
        rgb, notes = decode_rgb(raw[ext], min_side=self.min_side)
        label = decode_label(raw["label.png"]) if "label.png" in raw else None
        depth = decode_depth(raw["depth.npy"], name="depth.npy") if "depth.npy" in raw else None
        hw = rgb.shape[:2]
        for name, arr in (("label", label), ("depth", depth)):
            if arr is not None and arr.shape != hw:
                raise ImageError(f"{name} map is {arr.shape[1]}×{arr.shape[0]}, image is {hw[1]}×{hw[0]}")
        meta = json.loads(raw["json"]) if "json" in raw else {}
        if notes:
            meta = {**meta, "read_conversions": notes}
        if self.size is not None and hw != self.size:
            box = _crop_box(hw, self.size, self.fit)
            wh = (self.size[1], self.size[0])
            rgb = np.array(Image.fromarray(rgb).resize(wh, Image.Resampling.BILINEAR, box=box))
            if label is not None:
                label = np.array(Image.fromarray(label).resize(wh, Image.Resampling.NEAREST, box=box))
            if depth is not None:
                mode = Image.Resampling.NEAREST if self.depth_interpolation == "nearest" else Image.Resampling.BILINEAR
                depth = np.array(Image.fromarray(depth).resize(wh, mode, box=box))
        return {
            "__key__": raw["__key__"],
            "__url__": raw.get("__url__", ""),
            "image": torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255.0),
            "label": None if label is None else torch.from_numpy(label.astype(np.int64)),
            "depth": None if depth is None else torch.from_numpy(np.array(depth, dtype=np.float32)),
            "meta": meta,
        }


def open_shards(
    source: str | Sequence[str],
    *,
    size: Size | None = 224,
    fit: str = "crop",
    depth_interpolation: str = "nearest",
    shards: Sequence[int] | None = None,
    shuffle_shards: bool = False,
    shuffle_buffer: int = 0,
    seed: int = 0,
    split_by_node: bool = False,
    min_side: int = MIN_SIDE,
    storage_options: StorageOptions = None,
) -> wds.DataPipeline:
    """A webdataset pipeline of decoded samples (dicts of tensors) and BadSamples from ``source``.

    Decoded samples are ``{"__key__", "__url__", "image": float 3×H×W in 0..1, "label": long H×W or
    None, "depth": float H×W or None, "meta": dict}``. Shards are split across DataLoader workers
    (and across ranks with ``split_by_node``). Shuffling is deterministic given ``seed``.
    """
    urls = shard_urls(source, shards=shards, storage_options=storage_options)
    decode = DecodeSample(_as_hw(size), fit, depth_interpolation, min_side)
    stages: list[Any] = [wds.SimpleShardList(urls, seed=seed if shuffle_shards else None)]
    if split_by_node:
        stages.append(wds.split_by_node)
    stages += [wds.split_by_worker, _OpenShards(dict(storage_options or {})), wds.map(decode)]
    if shuffle_buffer > 0:
        stages.append(wds.shuffle(shuffle_buffer, initial=min(shuffle_buffer, 100), seed=seed))
    return wds.DataPipeline(*stages)


def collate_samples(items: Sequence[dict[str, Any] | BadSample], *, size: Size | None = None) -> dict[str, Any]:
    """Stack decoded samples into a batch; BadSamples go to ``batch["bad"]``.

    Returns ``{"__key__": [str], "__url__": [str], "image": B×3×H×W, "label": B×H×W long or None,
    "depth": B×H×W or None, "meta": [dict], "bad": [BadSample]}``. Where only some samples have a
    label (depth), the others get IGNORE_INDEX (NaN). A batch may hold fewer than the requested
    number of samples, or none, when some were bad.
    """
    good = [s for s in items if not isinstance(s, BadSample)]
    bad = [s for s in items if isinstance(s, BadSample)]
    if good:
        shapes = {tuple(s["image"].shape) for s in good}
        if len(shapes) > 1:
            raise ValueError(f"samples of different sizes {sorted(shapes)} cannot be batched: pass size=")
        image = torch.stack([s["image"] for s in good])
    else:
        hw = _as_hw(size) or (0, 0)
        image = torch.empty(0, 3, *hw)
    hw = tuple(image.shape[-2:])

    def stack(name: str, fill: float, dtype: torch.dtype) -> torch.Tensor | None:
        if not any(s[name] is not None for s in good):
            return None
        return torch.stack([s[name] if s[name] is not None else torch.full(hw, fill, dtype=dtype) for s in good])

    return {
        "__key__": [s["__key__"] for s in good],
        "__url__": [s["__url__"] for s in good],
        "image": image,
        "label": stack("label", IGNORE_INDEX, torch.int64),
        "depth": stack("depth", float("nan"), torch.float32),
        "meta": [s["meta"] for s in good],
        "bad": bad,
    }


def make_loader(
    source: str | Sequence[str],
    *,
    size: Size = 224,
    batch_size: int = 16,
    num_workers: int = 2,
    storage_options: StorageOptions = None,
    **pipeline_options: Any,
) -> torch.utils.data.DataLoader:
    """A DataLoader over ``source`` whose workers each read whole shards; batches as :func:`collate_samples`.

    ``pipeline_options`` go to :func:`open_shards` (fit, shards, shuffle_shards, shuffle_buffer, seed, …).
    Each worker's last batch may be partial; every batch carries the bad samples met while filling it.
    """
    pipeline = open_shards(source, size=size, storage_options=storage_options, **pipeline_options)
    pipeline.append(wds.batched(batch_size, collation_fn=functools.partial(collate_samples, size=size), partial=True))
    return torch.utils.data.DataLoader(pipeline, batch_size=None, num_workers=num_workers)
