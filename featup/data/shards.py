"""Write samples into webdataset ``.tar`` shards on any fsspec URL, then the manifest beside them.

Each sample becomes tar members ``<key>.jpg|png`` (image), ``<key>.label.png`` (class map),
``<key>.depth.npy`` (float32 depth) and ``<key>.json`` (meta) — the names webdataset readers expect.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterable, Sequence
from typing import Any

import webdataset as wds
from tqdm.auto import tqdm

import featup
from featup.data.images import encode_depth, encode_image, encode_label
from featup.data.manifest import Manifest, ShardInfo, manifest_url, write_manifest
from featup.data.samples import IGNORE_INDEX, BadSample, Sample, check_sample
from featup.io import StorageOptions, atomic_write, exists, join_url

log = logging.getLogger(__name__)

_TAR_BLOCK = 512


def encode_sample(sample: Sample, *, image_format: str = "jpg", jpeg_quality: int = 95) -> dict[str, Any]:
    """The webdataset dict (``__key__`` plus extension → bytes) for one contract sample."""
    out: dict[str, Any] = {
        "__key__": sample["__key__"],
        image_format: encode_image(sample["image"], image_format, quality=jpeg_quality),
        "json": json.dumps(sample.get("meta") or {}).encode(),
    }
    if sample.get("label") is not None:
        out["label.png"] = encode_label(sample["label"])
    if sample.get("depth") is not None:
        out["depth.npy"] = encode_depth(sample["depth"])
    return out


def _tar_bytes(encoded: dict[str, Any]) -> int:
    """Bytes the sample adds to a tar: a header block per member plus its data padded to 512."""
    return sum(_TAR_BLOCK + -(-len(v) // _TAR_BLOCK) * _TAR_BLOCK for k, v in encoded.items() if k != "__key__")


class _Shard:
    """One open shard being written atomically (visible only after a clean close)."""

    def __init__(self, url: str, storage_options: StorageOptions):
        self.url = url
        self._ctx = atomic_write(url, storage_options)
        self._file = self._ctx.__enter__()
        # mtime fixed so that the same samples give byte-identical shards (reproducible, diffable)
        self._tar = wds.TarWriter(self._file, mtime=0.0)
        self.keys: list[str] = []
        self.bytes = 0

    def write(self, encoded: dict[str, Any], size: int) -> None:
        self._tar.write(encoded)
        self.keys.append(encoded["__key__"])
        self.bytes += size

    def close(self) -> int:
        self._tar.close()
        size = self._file.tell()
        self._ctx.__exit__(None, None, None)
        return size

    def abort(self, exc: BaseException) -> None:
        # finish the tar stream first, so that it does not flush into a discarded file when collected
        with contextlib.suppress(Exception):
            self._tar.close()
        self._ctx.__exit__(type(exc), exc, exc.__traceback__)


def _source_of(sample: Any) -> str:
    """Where a sample came from, for its bad-sample record: the file its layout read, else its key."""
    meta = sample.get("meta") if isinstance(sample.get("meta"), dict) else {}
    return str(meta.get("file") or meta.get("source") or f"sample {sample.get('__key__')!r}")


def write_shards(
    samples: Iterable[Sample | BadSample],
    url: str,
    *,
    name: str | None = None,
    classes: Sequence[str] | None = None,
    ignore_index: int = IGNORE_INDEX,
    max_count: int = 1000,
    max_bytes: int = 256 * 2**20,
    image_format: str = "jpg",
    jpeg_quality: int = 95,
    prefix: str = "shard",
    meta: dict[str, Any] | None = None,
    overwrite: bool = False,
    storage_options: StorageOptions = None,
    progress: bool = True,
) -> Manifest:
    """Write ``samples`` as ``<url>/<prefix>-000000.tar, …`` and ``<url>/manifest.json``; returns the manifest.

    A shard is closed before it would pass ``max_count`` samples or ``max_bytes`` bytes (a single
    larger sample still gets a shard of its own). :class:`BadSample` items are not written; they are
    listed in the manifest's ``bad`` with their reasons. Keys must be unique; a repeated key is
    recorded as a bad sample. Each shard appears under its name only once complete.
    """
    if max_count < 1 or max_bytes < 1:
        raise ValueError(f"max_count and max_bytes must be positive, got {max_count} and {max_bytes}")
    if image_format not in ("jpg", "png"):
        raise ValueError(f"image_format must be 'jpg' or 'png', got {image_format!r}")
    if not overwrite and exists(manifest_url(url), storage_options):
        raise FileExistsError(
            f"{manifest_url(url)} already exists: pass overwrite=True to replace that dataset, or choose another URL"
        )
    shards: list[ShardInfo] = []
    bad: list[BadSample] = []
    seen: dict[str, str] = {}  # key -> where its sample came from
    has_label = has_depth = False
    current: _Shard | None = None

    def finish() -> None:
        nonlocal current
        if current is not None:
            size = current.close()
            shards.append(ShardInfo(current.url.rsplit("/", 1)[1], len(current.keys), size, tuple(current.keys)))
            log.info("wrote %s: %d samples, %d bytes", current.url, len(current.keys), size)
            current = None

    bar = tqdm(samples, desc=f"shards → {url}", unit="sample", disable=not progress)
    try:
        for item in bar:
            if isinstance(item, BadSample):
                bad.append(item)
                continue
            key = item.get("__key__")
            source = _source_of(item)
            try:
                check_sample(item)
            except ValueError as exc:
                bad.append(BadSample(key if isinstance(key, str) else None, source, str(exc)))
                continue
            if key in seen:
                bad.append(BadSample(key, source, f"duplicate key: {seen[key]} already has it"))
                continue
            seen[key] = source
            encoded = encode_sample(item, image_format=image_format, jpeg_quality=jpeg_quality)
            size = _tar_bytes(encoded)
            if current is not None and (len(current.keys) >= max_count or current.bytes + size > max_bytes):
                finish()
            if current is None:
                current = _Shard(join_url(url, f"{prefix}-{len(shards):06d}.tar"), storage_options)
            current.write(encoded, size)
            has_label |= item.get("label") is not None
            has_depth |= item.get("depth") is not None
        finish()
    except BaseException as exc:
        if current is not None:
            current.abort(exc)
        raise
    finally:
        bar.close()
    manifest = Manifest(
        name=name or url.rstrip("/").rsplit("/", 1)[-1],
        shards=shards,
        classes=list(classes) if classes is not None else None,
        ignore_index=ignore_index,
        has_label=has_label,
        has_depth=has_depth,
        image_format=image_format,
        bad=bad,
        meta=dict(meta or {}),
        featup_version=featup.__version__,
    )
    write_manifest(manifest, url, storage_options=storage_options)
    if bad:
        log.warning("%d bad samples skipped (listed in %s under 'bad')", len(bad), manifest.url)
    return manifest
