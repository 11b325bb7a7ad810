"""An opened feature store: its spec, which shards are complete, bad samples, shard writers, read views.

The store is the only truth about what is done: a shard is complete exactly when its completion record
exists (see ``featup.store._group``). Reading it as dask or xarray (``to_dask`` / ``to_xarray``) imports
those libraries on first use, so writers never load them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from featup.data.samples import BadSample
from featup.io import StorageOptions, StorageRoot, as_root
from featup.store._group import ABSENT, BAD, FORMAT, WRITTEN, zarr_store
from featup.store.pca import PCABasis
from featup.store.spec import FeatureSpec, StorageEstimate, estimate_bytes
from featup.store.writer import ShardCompleteError, ShardWriter

if TYPE_CHECKING:
    import dask.array as da
    import xarray as xr

__all__ = ["FeatureStore", "open_feature_store"]


def open_feature_store(location: str | StorageRoot, *, mode: str = "r",
                       storage_options: StorageOptions = None) -> FeatureStore:
    """Open the store at ``location`` (its group, see ``group_root``): ``mode="r"`` to read, ``"a"`` to write."""
    return FeatureStore(location, mode=mode, storage_options=storage_options)


class FeatureStore:
    """An opened feature store: its spec, per-shard state, shard writers, and dask / xarray views."""

    def __init__(self, location: str | StorageRoot, *, mode: str = "r", storage_options: StorageOptions = None):
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', got {mode!r}")
        self.root = as_root(location, storage_options)
        self.url = self.root.url
        self.mode = mode
        url = self.url
        store = zarr_store(self.root, read_only=mode == "r")
        try:
            self._group = zarr.open_group(store, mode="r" if mode == "r" else "r+")
        except (FileNotFoundError, zarr.errors.GroupNotFoundError):
            raise FileNotFoundError(
                f"no feature store at {url}: check the URL, or create it with create_feature_store(...)"
            ) from None
        info = self._group.attrs.get("featup_store")
        if not info or info.get("format") != FORMAT or not info.get("ready"):
            raise ValueError(
                f"{url} is not a complete featup feature store (its creation may have been interrupted: "
                "run create_feature_store again)"
            )
        self.info: dict[str, Any] = dict(info)
        self.spec = FeatureSpec.from_dict(info["spec"])
        self.stride: int = info["stride"]
        self.shard_counts: list[int] = [s["count"] for s in info["shards"]]
        self._arrays: dict[str, zarr.Array] = {}

    def _array(self, name: str) -> zarr.Array:
        """The named array, its metadata fetched once (each lookup is a GET on object storage)."""
        if name not in self._arrays:
            self._arrays[name] = self._group[name]
        return self._arrays[name]

    def __repr__(self) -> str:
        s = self.spec
        return f"FeatureStore({self.url!r}, {s.dataset}/{s.backbone}/{s.upsampler}, {self.num_shards} shards)"

    @property
    def num_shards(self) -> int:
        """Shards of the source dataset."""
        return len(self.shard_counts)

    @property
    def estimate(self) -> StorageEstimate:
        """Bytes this store needs before compression."""
        return estimate_bytes(self.spec, sum(self.shard_counts))

    def rows(self, shard: int) -> range:
        """The rows shard ``shard`` owns."""
        if not 0 <= shard < self.num_shards:
            raise IndexError(f"shard {shard} out of range: the store has {self.num_shards} shards")
        start = shard * self.stride
        return range(start, start + self.shard_counts[shard])

    def shard_url(self, shard: int) -> str:
        """URL of shard ``shard``'s tar, beside the manifest the store was created from."""
        self.rows(shard)  # range check
        return f"{self.info['manifest_url'].rsplit('/', 1)[0]}/{self.info['shards'][shard]['name']}"

    def keys(self, shard: int) -> list[str]:
        """Sample keys of shard ``shard`` in row order."""
        r = self.rows(shard)
        return [str(k) for k in self._array("keys")[r.start : r.stop]]

    def status(self) -> np.ndarray:
        """Per-row status: 0 absent (not committed, or padding), 1 written, 2 bad sample."""
        return np.asarray(self._array("status")[:])

    def is_complete(self, shard: int) -> bool:
        """Whether the shard's completion record exists (its data is all there)."""
        return int(self._array("status")[self.rows(shard).start]) != ABSENT

    def completed_shards(self) -> list[int]:
        """Indices of complete shards."""
        status = self.status()
        return [i for i in range(self.num_shards) if status[i * self.stride] != ABSENT]

    def pending_shards(self) -> list[int]:
        """Indices of shards still to write (never started, or interrupted)."""
        done = set(self.completed_shards())
        return [i for i in range(self.num_shards) if i not in done]

    def bad_samples(self) -> list[BadSample]:
        """Samples recorded as bad by committed shards, with their reasons."""
        status = self.status()
        rows = np.flatnonzero(status == BAD)
        if rows.size == 0:
            return []
        keys, reasons = self._array("keys")[:], self._array("bad_reason")[:]
        return [BadSample(str(keys[r]), f"{self.url}#shard={r // self.stride}", str(reasons[r])) for r in rows]

    def pca(self) -> PCABasis | None:
        """The stored PCA basis, or None without PCA."""
        if not self.spec.pca_components:
            return None
        comps = self._array("pca_components")
        return PCABasis(
            mean=np.asarray(self._array("pca_mean")[:]),
            components=np.asarray(comps[:]),
            explained_variance_ratio=np.asarray(comps.attrs["explained_variance_ratio"], dtype=np.float32),
        )

    def shard_writer(self, shard: int, *, redo: bool = False) -> ShardWriter:
        """A writer for shard ``shard``; ShardCompleteError if it is complete, unless ``redo``."""
        if self.mode != "a":
            raise PermissionError(f"{self.url} was opened read-only: open it with mode='a' to write")
        if self.is_complete(shard):
            if not redo:
                raise ShardCompleteError(
                    f"shard {shard} of {self.url} is already complete: skip it (see pending_shards()) "
                    "or pass redo=True to write it again"
                )
            r = self.rows(shard)
            self._array("status")[r.start : r.start + self.stride] = ABSENT  # un-commit first
        return ShardWriter(self, shard)

    def to_dask(self, name: str = "features", *, complete_only: bool = True, reconstruct_pca: bool = False) -> da.Array:
        """``features`` or ``lowres`` as a lazy float array; only written rows unless ``complete_only=False``.

        bfloat16 is decoded to float32; ``reconstruct_pca`` turns PCA coefficients back into all channels.
        """
        from featup.store.views import to_dask

        return to_dask(self, name, complete_only=complete_only, reconstruct_pca=reconstruct_pca)

    def to_xarray(self, *, complete_only: bool = True, reconstruct_pca: bool = False) -> xr.Dataset:
        """An xarray Dataset: ``features`` (and ``lowres``) over dims sample × channel × y × x.

        The ``sample`` coordinate holds the keys (``ds.sel(sample="000000000139")``); ``shard`` and
        ``status`` are per-sample coordinates; the attributes are the spec: how the features were made.
        """
        from featup.store.views import to_xarray

        return to_xarray(self, complete_only=complete_only, reconstruct_pca=reconstruct_pca)

    def written_rows(self) -> np.ndarray:
        """Rows holding written features (complete shards only)."""
        return np.flatnonzero(self.status() == WRITTEN)
