"""Read a feature store as dask arrays and xarray Datasets (lazy, chunk by chunk).

The only store module that imports dask and xarray; ``FeatureStore.to_dask`` / ``to_xarray`` load it on
first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import dask.array as da
import numpy as np
import xarray as xr

from featup.store import encoding

if TYPE_CHECKING:
    from featup.store.feature_store import FeatureStore

__all__ = ["to_dask", "to_xarray"]


def to_dask(store: FeatureStore, name: str = "features", *, complete_only: bool = True,
            reconstruct_pca: bool = False) -> da.Array:
    """``features`` or ``lowres`` as a lazy float array; only written rows unless ``complete_only=False``."""
    spec = store.spec
    arr = da.from_zarr(store._array(name))
    if spec.dtype == "bfloat16":
        arr = arr.map_blocks(encoding.decode, "bfloat16", dtype=np.float32)
    if reconstruct_pca and name == "features" and spec.pca_components:
        basis = store.pca()
        arr = arr.rechunk({1: -1}).map_blocks(
            basis.reconstruct,
            chunks=(arr.chunks[0], (spec.channels,), arr.chunks[2], arr.chunks[3]),
            dtype=np.float32,
        )
    if complete_only:
        arr = arr[store.written_rows()]
    return arr


def to_xarray(store: FeatureStore, *, complete_only: bool = True, reconstruct_pca: bool = False) -> xr.Dataset:
    """An xarray Dataset over sample × channel × y × x; the attributes are the spec (how the features were made)."""
    spec = store.spec
    rows = store.written_rows() if complete_only else np.arange(store._array("keys").shape[0])
    status = store.status()[rows]
    keys = np.asarray(store._array("keys")[:]).astype(object)[rows]
    channel = "component" if spec.pca_components and not reconstruct_pca else "channel"
    data = {
        "features": (
            ("sample", channel, "y", "x"),
            to_dask(store, "features", complete_only=False, reconstruct_pca=reconstruct_pca)[rows],
        )
    }
    if spec.lowres_size:
        data["lowres"] = (("sample", "channel", "ly", "lx"), to_dask(store, "lowres", complete_only=False)[rows])
    coords = {"sample": keys, "shard": ("sample", rows // store.stride), "status": ("sample", status)}
    attrs = {**spec.to_dict(), "featup_version": store.info.get("featup_version"), "store_url": store.url}
    return xr.Dataset(data, coords=coords, attrs=attrs)
