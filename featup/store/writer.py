"""Write one shard's rows, then commit its completion record: the only code that writes a feature store's data.

Needs numpy and zarr only (no dask, no xarray, no torch): a pipeline worker imports this and nothing of
the store's read views.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from featup.store import encoding
from featup.store._group import ABSENT, BAD, WRITTEN

if TYPE_CHECKING:
    from featup.store.feature_store import FeatureStore

log = logging.getLogger(__name__)

__all__ = ["IncompleteShardError", "ShardCompleteError", "ShardWriteError", "ShardWriter"]


class ShardWriteError(OSError):
    """Storage failed while a shard was written; nothing was committed for it, so re-running redoes it."""


class IncompleteShardError(ValueError):
    """A shard was committed before every one of its samples was written or marked bad."""


class ShardCompleteError(FileExistsError):
    """The shard is already complete; skip it or ask for ``redo=True``."""


class ShardWriter:
    """Writes one shard's rows, then commits its completion record; use as a context manager.

    ``write`` batches in any order, ``mark_bad`` samples that could not be processed; leaving the
    ``with`` block normally commits (every sample must be written or marked bad), leaving it by an
    exception commits nothing, so the shard stays pending and a re-run redoes it.
    """

    def __init__(self, store: FeatureStore, shard: int):
        self.store = store
        self.shard = shard
        self._start = store.rows(shard).start
        self._keys = store.keys(shard)
        self._offset = {k: i for i, k in enumerate(self._keys)}
        self._status = np.zeros(store.stride, dtype=np.uint8)
        self._reasons = np.full(store.stride, "", dtype=object)
        self._pca = store.pca()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc is None:
            self.commit()
        else:
            exc.add_note(f"shard {self.shard} of {self.store.url} was not committed; re-running it redoes it")

    def _offsets(self, keys: Sequence[str]) -> np.ndarray:
        try:
            return np.array([self._offset[k] for k in keys], dtype=np.int64)
        except KeyError as exc:
            raise ValueError(f"key {exc.args[0]!r} is not in shard {self.shard} of {self.store.url}") from None

    def _check(self, name: str, values: Any, channels: int, hw: tuple[int, int], n: int) -> None:
        shape = tuple(values.shape)
        if shape != (n, channels, *hw):
            raise ValueError(f"{name} must have shape {(n, channels, *hw)} (B×C×H×W), got {shape}")

    def write(self, keys: Sequence[str], features: Any, lowres: Any = None) -> None:
        """Store the B×C×H×W ``features`` (and ``lowres``), torch tensors or numpy arrays, of the samples ``keys``.

        Values already in the stored dtype (float16 / float32, or bfloat16 bits as uint16: what the pipeline
        casts to on its device) are stored as they are; others are rounded to it here.
        """
        spec = self.store.spec
        offsets = self._offsets(keys)
        self._check("features", features, spec.channels, spec.size, len(keys))
        if (lowres is None) != (spec.lowres_size is None):
            raise ValueError("lowres must be given exactly when the store keeps low-res features (spec.lowres_size)")
        if lowres is not None:
            self._check("lowres", lowres, spec.channels, spec.lowres_size, len(keys))
        if self._pca is not None:
            features = self._pca.project(features)
        parts = [("features", encoding.encode(features, spec.dtype))]
        if lowres is not None:
            parts.append(("lowres", encoding.encode(lowres, spec.dtype)))
        order = np.argsort(offsets, kind="stable")
        try:
            for name, values in parts:
                target = self.store._array(name)
                # contiguous runs of rows go in one assignment, which zarr writes chunk-parallel
                for run in np.split(order, np.flatnonzero(np.diff(offsets[order]) != 1) + 1):
                    first = self._start + int(offsets[run[0]])
                    target[first : first + len(run)] = values[run]
        except Exception as exc:
            raise ShardWriteError(
                f"writing shard {self.shard} to {self.store.url} failed ({type(exc).__name__}: {exc}); "
                "nothing was committed for this shard: re-run it once storage is reachable"
            ) from exc
        self._status[offsets] = WRITTEN
        self._reasons[offsets] = ""

    def listed(self, key: str) -> bool:
        """Whether ``key`` is one of this shard's samples (the manifest's list for it)."""
        return key in self._offset

    def mark_bad(self, key: str, reason: str) -> None:
        """Record that sample ``key`` could not be processed, and why."""
        offset = self._offsets([key])[0]
        self._status[offset] = BAD
        self._reasons[offset] = reason

    def missing(self) -> list[str]:
        """Keys neither written nor marked bad yet."""
        return [k for i, k in enumerate(self._keys) if self._status[i] == ABSENT]

    def commit(self) -> None:
        """Write the shard's completion record (after its data); IncompleteShardError if samples are missing."""
        missing = self.missing()
        if missing:
            raise IncompleteShardError(
                f"shard {self.shard} of {self.store.url}: {len(missing)} samples neither written nor marked bad "
                f"(first: {missing[:3]}); write them or mark_bad() them before committing"
            )
        end = self._start + self.store.stride
        try:
            self.store._array("bad_reason")[self._start : end] = self._reasons.astype(str)
            self.store._array("status")[self._start : end] = self._status  # the commit: one object, written last
        except Exception as exc:
            raise ShardWriteError(
                f"committing shard {self.shard} to {self.store.url} failed ({type(exc).__name__}: {exc}); "
                "the shard stays pending: re-run it"
            ) from exc
        log.info("shard %d of %s committed", self.shard, self.store.url)
