"""Chunked zarr v3 feature store on local disk or object storage, written shard by shard and resumable."""

from featup.store.feature_store import (
    FeatureStore,
    IncompleteShardError,
    ShardCompleteError,
    ShardWriteError,
    ShardWriter,
    create_feature_store,
    group_url,
    open_feature_store,
)
from featup.store.pca import PCABasis, fit_pca
from featup.store.spec import FeatureSpec, StorageEstimate, estimate_bytes

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
    "group_url",
    "open_feature_store",
]
