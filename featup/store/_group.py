"""The zarr group under a feature store: where it lives, how it is opened, how shards map to rows.

One zarr group per (dataset, backbone, upsampler) at ``<root>/<dataset>/<backbone>/<upsampler>``::

    features    rows × C × H × W   (C = k with PCA; float16 / float32, or bfloat16 bits as uint16)
    lowres      rows × C × h × w   (optional)
    keys        rows               sample keys, filled from the shard manifest at creation
    status      rows               0 absent, 1 written, 2 bad sample: the per-shard completion record
    bad_reason  rows               why a row is bad
    pca_mean, pca_components       the PCA basis (only with PCA)

Rows are pre-allocated from the manifest: shard ``i`` owns rows ``[i·S, i·S + count_i)`` with a stride
``S`` that is a multiple of the row chunk, and the 1-D arrays are chunked by ``S``. So every shard maps
to chunks no other shard touches, two writers of different shards never read-modify-write the same
object, and a shard's ``status`` chunk is one object: it is written last, atomically (one PUT, or
write-and-rename on disk), after the shard's data. A shard is complete exactly when that object exists;
anything else (feature chunks of an interrupted run) stays invisible to readers and is overwritten by
the re-run. Rows never written read as NaN.
"""

from __future__ import annotations

import math
from typing import Any

from zarr.storage import FsspecStore, LocalStore

from featup.data.manifest import Manifest
from featup.io import StorageRoot, local_path
from featup.store.spec import FeatureSpec

FORMAT = "featup-features/1"
ABSENT, WRITTEN, BAD = 0, 1, 2


def group_root(root: StorageRoot, spec: FeatureSpec) -> StorageRoot:
    """Where the store for ``spec`` lives under ``root``."""
    return root.join(spec.dataset, spec.backbone, spec.upsampler)


def zarr_store(root: StorageRoot, *, read_only: bool) -> Any:
    """The zarr store over ``root``: a LocalStore on disk (atomic renames), else fsspec."""
    if root.is_local:
        return LocalStore(local_path(root.url), read_only=read_only)
    return FsspecStore.from_url(root.url, storage_options=dict(root.options), read_only=read_only)


def layout(manifest: Manifest, rows_per_chunk: int) -> tuple[int, int]:
    """(stride, rows): each shard gets ``stride`` rows, a multiple of the row chunk, so shards share no chunk."""
    stride = math.ceil(max(s.count for s in manifest.shards) / rows_per_chunk) * rows_per_chunk
    return stride, stride * len(manifest.shards)
