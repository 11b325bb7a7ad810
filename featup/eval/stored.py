"""Features precomputed into a feature store, scored in place of upsampling on the fly."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:  # featup.store pulls in dask and xarray, which evaluating on the fly does not need
    from featup.store import FeatureStore

__all__ = ["StoredFeatures"]


class StoredFeatures:
    """An upsampler spec for `compare_upsamplers` that reads each sample's features from a feature store.

    Probes and CAMs then score exactly what ``precompute_features`` wrote (PCA-coded stores are
    reconstructed to all channels). The store serves the backbone it was made with (its id, e.g.
    ``efficientnet_lite0`` or ``efficientnet_lite0-stride32``); ``otherwise`` (a module, or a factory
    called with the backbone) serves the others, such as a CAM head, else their cells stay empty. Only
    committed rows count, so a sample of an unfinished shard is an error that says how to finish the store.
    """

    def __init__(self, store: FeatureStore, otherwise: nn.Module | Callable[[nn.Module], Any] | None = None):
        self.store = store
        self.otherwise = otherwise
        self._data = store.to_xarray(reconstruct_pca=True)["features"]
        self._keys = set(self._data.indexes["sample"])

    def __repr__(self) -> str:
        return f"StoredFeatures({self.store.url!r})"

    def __call__(self, backbone: nn.Module) -> Any:
        """This spec for ``backbone`` if the store holds its features, else what ``otherwise`` gives (or None)."""
        if getattr(backbone, "id", None) == self.store.spec.backbone:
            return self
        if self.otherwise is None or isinstance(self.otherwise, nn.Module):
            return self.otherwise
        return self.otherwise(backbone)

    def read(self, key: str) -> torch.Tensor:
        """The stored 1×C×H×W float32 features of sample ``key``."""
        if key not in self._keys:
            raise KeyError(f"{self.store.url} has no features for sample {key!r}: its shard is not complete or the "
                           "sample was recorded as bad (store.bad_samples()); run precompute-features on the same "
                           "shards again to finish the store")
        return torch.from_numpy(self._data.sel(sample=key).values.astype("float32"))[None]

    def bound(self, key: str):
        """An upsample function for one sample: ignores the live features and returns the stored ones."""
        return lambda features, image01, size: self.read(key).to(features.device)
