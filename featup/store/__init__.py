"""Chunked zarr v3 feature store on local disk or object storage, written shard by shard and resumable.

``create`` makes a store, ``feature_store`` opens one (state, bad samples, shard writers), ``writer``
writes a shard and commits it, ``views`` reads it as dask / xarray (imported on first use only).
"""

from featup.store._group import group_root
from featup.store.create import create_feature_store
from featup.store.feature_store import FeatureStore, open_feature_store
from featup.store.pca import PCABasis, fit_pca
from featup.store.spec import FeatureSpec, StorageEstimate, estimate_bytes
from featup.store.writer import (
    IncompleteShardError,
    ShardCompleteError,
    ShardWriteError,
    ShardWriter,
)

__all__ = [
    "FeatureSpec",
    "FeatureStore",
    "IncompleteShardError",
    "PCABasis",
    "ShardCompleteError",
    "ShardWriteError",
    "ShardWriter",
    "StorageEstimate",
    "create_feature_store",
    "estimate_bytes",
    "fit_pca",
    "group_root",
    "open_feature_store",
]

