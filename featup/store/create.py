"""Create a feature store: size it from the shard manifest, refuse what will not fit, pre-allocate its rows.

Run once before the shard writers start (``featup.store._group`` describes the layout). Creating the
same store again returns it as is, so every run of a pipeline may call it.
"""

from __future__ import annotations

import datetime
import logging
from typing import Any

import numpy as np
import zarr

import featup
from featup.data.manifest import Manifest
from featup.io import StorageOptions, StorageRoot, as_root
from featup.store import encoding
from featup.store._group import ABSENT, FORMAT, group_root, layout, zarr_store
from featup.store.feature_store import FeatureStore
from featup.store.pca import PCABasis
from featup.store.spec import FeatureSpec, estimate_bytes, human_bytes

log = logging.getLogger(__name__)

__all__ = ["create_feature_store"]


def create_feature_store(
    root: str | StorageRoot,
    spec: FeatureSpec,
    manifest: Manifest,
    *,
    pca: PCABasis | None = None,
    max_bytes: int | None = None,
    overwrite: bool = False,
    storage_options: StorageOptions = None,
) -> FeatureStore:
    """Create (or reopen, if identical) the store for ``spec`` over ``manifest``'s shards, rows pre-allocated.

    Run it once before the shard writers start. The bytes needed are logged, and with ``max_bytes``
    a larger store is refused before anything is written. An existing complete store with the same
    spec and shards is returned as is; a different one raises unless ``overwrite``.
    """
    if not manifest.shards:
        raise ValueError("the manifest lists no shards: nothing to store")
    if spec.pca_components:
        if pca is None or pca.k != spec.pca_components or pca.channels != spec.channels:
            raise ValueError(
                f"pca_components={spec.pca_components} needs pca=fit_pca(features, k={spec.pca_components}) "
                f"fitted on {spec.channels}-channel features"
            )
    elif pca is not None:
        raise ValueError("a PCA basis was given but spec.pca_components is None; set it to pca.k")
    group = group_root(as_root(root, storage_options), spec)
    url = group.url
    estimate = estimate_bytes(spec, manifest.num_samples)
    log.info("feature store %s will need:\n%s", url, estimate)
    if max_bytes is not None and estimate.total > max_bytes:
        raise ValueError(
            f"{estimate}\nexceeds max_bytes={human_bytes(max_bytes)}: lower size, use pca_components=k, "
            "or raise max_bytes"
        )
    stride, rows = layout(manifest, spec.rows_per_chunk)
    store = zarr_store(group, read_only=False)
    info = {
        "format": FORMAT,
        "stride": stride,
        "shards": [{"name": s.name, "count": s.count} for s in manifest.shards],
        "dataset_name": manifest.name,
        "manifest_url": manifest.url,
        "classes": manifest.classes,
    }
    if not overwrite:
        existing = _existing_info(store)
        if existing is not None and existing.get("ready"):
            mine = {"spec": spec.to_dict(), "stride": stride, "shards": info["shards"]}
            theirs = {k: existing.get(k) for k in ("spec", "stride", "shards")}
            if mine == theirs:
                return FeatureStore(group, mode="a")
            changed = sorted(k for k in mine if mine[k] != theirs[k])
            raise FileExistsError(
                f"a different feature store exists at {url} (differs in {', '.join(changed)}): "
                "pass overwrite=True to replace it, or use another root"
            )
    # mode "w" clears whatever was there, including a store whose creation was interrupted
    zgroup = zarr.open_group(store, mode="w", attributes={"featup_store": {**info, "ready": False}})
    _create_arrays(zgroup, spec, manifest, stride, rows, pca)
    zgroup.attrs["featup_store"] = {
        **info,
        "spec": spec.to_dict(),
        "featup_version": featup.__version__,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "status_codes": {"0": "absent", "1": "written", "2": "bad sample"},
        "ready": True,
    }
    return FeatureStore(group, mode="a")


def _existing_info(store: Any) -> dict[str, Any] | None:
    try:
        group = zarr.open_group(store, mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError):
        return None
    return {**group.attrs.get("featup_store", {})}


def _create_arrays(
    group: zarr.Group, spec: FeatureSpec, manifest: Manifest, stride: int, rows: int, pca: PCABasis | None
) -> None:
    stored = encoding.storage_dtype(spec.dtype)
    fill = encoding.fill_value(spec.dtype)
    codec = encoding.compressors(spec)
    dtype_attrs = {"featup_dtype": spec.dtype}
    if spec.dtype == "bfloat16":
        dtype_attrs["encoding"] = encoding.BF16_ENCODING
    channel_dim = "component" if spec.pca_components else "channel"
    h, w = spec.size
    cc = spec.channels_per_chunk or spec.stored_channels
    group.create_array(
        "features",
        shape=(rows, spec.stored_channels, h, w),
        chunks=(spec.rows_per_chunk, cc, h, w),
        dtype=stored,
        fill_value=fill,
        compressors=codec,
        dimension_names=("sample", channel_dim, "y", "x"),
        attributes=dtype_attrs,
    )
    if spec.lowres_size:
        lh, lw = spec.lowres_size
        group.create_array(
            "lowres",
            shape=(rows, spec.channels, lh, lw),
            chunks=(spec.rows_per_chunk, spec.channels, lh, lw),
            dtype=stored,
            fill_value=fill,
            compressors=codec,
            dimension_names=("sample", "channel", "ly", "lx"),
            attributes=dtype_attrs,
        )
    keys = group.create_array("keys", shape=(rows,), chunks=(stride,), dtype=str, dimension_names=("sample",))
    group.create_array(
        "status", shape=(rows,), chunks=(stride,), dtype="uint8", fill_value=ABSENT, dimension_names=("sample",)
    )
    group.create_array("bad_reason", shape=(rows,), chunks=(stride,), dtype=str, dimension_names=("sample",))
    padded = np.full(rows, "", dtype=object)
    for i, shard in enumerate(manifest.shards):
        padded[i * stride : i * stride + shard.count] = shard.keys
    keys[:] = padded.astype(str)
    if pca is not None:
        group.create_array("pca_mean", data=pca.mean.astype(np.float32), dimension_names=("channel",))
        group.create_array(
            "pca_components",
            data=pca.components.astype(np.float32),
            dimension_names=("component", "channel"),
            attributes={"explained_variance_ratio": [float(v) for v in pca.explained_variance_ratio]},
        )
