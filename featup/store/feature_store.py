"""A zarr v3 feature store over fsspec (local path or ``s3://``), written shard by shard, safely and resumably.

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

import datetime
import logging
import math
from collections.abc import Sequence
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
import zarr
from zarr.storage import FsspecStore, LocalStore

import featup
from featup.data.manifest import Manifest
from featup.data.samples import BadSample
from featup.data.storage import StorageOptions, is_local, join_url, local_path
from featup.store import encoding
from featup.store.pca import PCABasis
from featup.store.spec import FeatureSpec, StorageEstimate, estimate_bytes, human_bytes

log = logging.getLogger(__name__)

FORMAT = "featup-features/1"
ABSENT, WRITTEN, BAD = 0, 1, 2


class ShardWriteError(OSError):
    """Storage failed while a shard was written; nothing was committed for it, so re-running redoes it."""


class IncompleteShardError(ValueError):
    """A shard was committed before every one of its samples was written or marked bad."""


class ShardCompleteError(FileExistsError):
    """The shard is already complete; skip it or ask for ``redo=True``."""


def group_url(root: str, spec: FeatureSpec) -> str:
    """Where the store for ``spec`` lives under ``root``."""
    return join_url(root, spec.dataset, spec.backbone, spec.upsampler)


def _zarr_store(url: str, storage_options: StorageOptions, *, read_only: bool) -> Any:
    if is_local(url):
        return LocalStore(local_path(url), read_only=read_only)
    return FsspecStore.from_url(url, storage_options=dict(storage_options or {}), read_only=read_only)


def _layout(manifest: Manifest, rows_per_chunk: int) -> tuple[int, int]:
    """(stride, rows): each shard gets ``stride`` rows, a multiple of the row chunk, so shards share no chunk."""
    stride = math.ceil(max(s.count for s in manifest.shards) / rows_per_chunk) * rows_per_chunk
    return stride, stride * len(manifest.shards)


def create_feature_store(
    root: str,
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
    url = group_url(root, spec)
    estimate = estimate_bytes(spec, manifest.num_samples)
    log.info("feature store %s will need:\n%s", url, estimate)
    if max_bytes is not None and estimate.total > max_bytes:
        raise ValueError(
            f"{estimate}\nexceeds max_bytes={human_bytes(max_bytes)}: lower size, use pca_components=k, "
            "or raise max_bytes"
        )
    stride, rows = _layout(manifest, spec.rows_per_chunk)
    store = _zarr_store(url, storage_options, read_only=False)
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
                return FeatureStore(url, mode="a", storage_options=storage_options)
            changed = sorted(k for k in mine if mine[k] != theirs[k])
            raise FileExistsError(
                f"a different feature store exists at {url} (differs in {', '.join(changed)}): "
                "pass overwrite=True to replace it, or use another root"
            )
    # mode "w" clears whatever was there, including a store whose creation was interrupted
    group = zarr.open_group(store, mode="w", attributes={"featup_store": {**info, "ready": False}})
    _create_arrays(group, spec, manifest, stride, rows, pca)
    group.attrs["featup_store"] = {
        **info,
        "spec": spec.to_dict(),
        "featup_version": featup.__version__,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "status_codes": {"0": "absent", "1": "written", "2": "bad sample"},
        "ready": True,
    }
    return FeatureStore(url, mode="a", storage_options=storage_options)


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


def open_feature_store(url: str, *, mode: str = "r", storage_options: StorageOptions = None) -> FeatureStore:
    """Open the store at ``url`` (a group URL, see :func:`group_url`): ``mode="r"`` to read, ``"a"`` to write."""
    return FeatureStore(url, mode=mode, storage_options=storage_options)


class FeatureStore:
    """An opened feature store: its spec, per-shard state, shard writers, and dask / xarray views."""

    def __init__(self, url: str, *, mode: str = "r", storage_options: StorageOptions = None):
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', got {mode!r}")
        self.url = url
        self.mode = mode
        store = _zarr_store(url, storage_options, read_only=mode == "r")
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
        arr = da.from_zarr(self._array(name))
        if self.spec.dtype == "bfloat16":
            arr = arr.map_blocks(encoding.decode, "bfloat16", dtype=np.float32)
        if reconstruct_pca and name == "features" and self.spec.pca_components:
            basis = self.pca()
            arr = arr.rechunk({1: -1}).map_blocks(
                basis.reconstruct,
                chunks=(arr.chunks[0], (self.spec.channels,), arr.chunks[2], arr.chunks[3]),
                dtype=np.float32,
            )
        if complete_only:
            arr = arr[self._written_rows()]
        return arr

    def to_xarray(self, *, complete_only: bool = True, reconstruct_pca: bool = False) -> xr.Dataset:
        """An xarray Dataset: ``features`` (and ``lowres``) over dims sample × channel × y × x.

        The ``sample`` coordinate holds the keys (``ds.sel(sample="000000000139")``); ``shard`` and
        ``status`` are per-sample coordinates; the attributes say how the features were made.
        """
        rows = self._written_rows() if complete_only else np.arange(self._array("keys").shape[0])
        status = self.status()[rows]
        keys = np.asarray(self._array("keys")[:]).astype(object)[rows]
        channel = "component" if self.spec.pca_components and not reconstruct_pca else "channel"
        data = {
            "features": (
                ("sample", channel, "y", "x"),
                self.to_dask("features", complete_only=False, reconstruct_pca=reconstruct_pca)[rows],
            )
        }
        if self.spec.lowres_size:
            data["lowres"] = (("sample", "channel", "ly", "lx"), self.to_dask("lowres", complete_only=False)[rows])
        coords = {"sample": keys, "shard": ("sample", rows // self.stride), "status": ("sample", status)}
        attrs = {**self.spec.to_dict(), "featup_version": self.info.get("featup_version"), "store_url": self.url}
        return xr.Dataset(data, coords=coords, attrs=attrs)

    def _written_rows(self) -> np.ndarray:
        return np.flatnonzero(self.status() == WRITTEN)


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
        """Store the B×C×H×W ``features`` (and ``lowres``), torch tensors or numpy arrays, of the samples ``keys``."""
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
