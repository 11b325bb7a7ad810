"""Tasks of the precompute pipeline: create the feature store, process one shard.

A shard task needs only (store, shard, runtime options): it rebuilds the models from the store's spec
(``featup_tasks.models.for_spec``), and the store alone says whether the shard is done.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from featup_tasks import models
from featup_tasks.locks import held, host_lock, lock_key, lock_manager
from featup_tasks.storage import io_retry
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from featup.data.manifest import Manifest
from featup.io import StorageRoot
from featup.pipeline import (
    PrecomputeOptions,
    ShardReport,
    feature_spec,
    precompute_shard,
)
from featup.store import create_feature_store, open_feature_store


@dataclass(frozen=True)
class CreatedStore:
    """A created (or reopened) store: its location, shard count, the shards it does not record complete, and
    when it was created (what tells it from a store made anew at the same place)."""

    root: StorageRoot
    num_shards: int
    pending: list[int]
    version: str


@task(name="create-feature-store", retries=3, retry_delay_seconds=[2, 10, 30], retry_condition_fn=io_retry,
      persist_result=False, cache_policy=NO_CACHE)
def create_store(manifest: Manifest, root: StorageRoot, *, dataset: str, backbone: str, tap: str | None,
                 upsampler: str, output_size: tuple[int, int], dtype: str, keep_lowres: bool, random_weights: bool,
                 options: PrecomputeOptions, upsampler_options: dict[str, Any] | None = None,
                 lock_dir: str | None = None, redis_url: str | None = None) -> CreatedStore:
    """Create (or reopen, when identical) the zarr store for this (dataset, backbone, upsampler).

    The models are loaded (into this process's cache, where shard tasks find them again) to write the
    spec: the recipe and provenance of the features. With ``lock_dir`` (this host) or ``redis_url`` (every
    host), runs that meet here create the store one after the other: two creators at once would each clear
    what the other made.
    """
    logger = get_run_logger()
    bb = models.backbone(backbone, tap, options.weights, random_weights)
    up = models.upsampler(upsampler, bb, options.checkpoint, upsampler_options)
    spec = feature_spec(dataset, bb, upsampler, up, size=output_size, dtype=dtype, keep_lowres=keep_lowres,
                        upsampler_options=upsampler_options)
    with host_lock(lock_dir, "store", root.url, spec.dataset, spec.backbone, spec.upsampler, redis_url=redis_url):
        store = create_feature_store(root, spec, manifest)
    pending = store.pending_shards()
    logger.info("feature store %s: %d shards, %d pending\n%s", store.url, store.num_shards, len(pending),
                store.estimate)
    return CreatedStore(store.root, store.num_shards, pending, str(store.info.get("created")))


def shard_lock_key(store_url: str, store_version: str, shard: int) -> str:
    """The lock of one shard of one store (as created)."""
    return lock_key("shard", store_url, store_version, shard)


@task(name="precompute-shard", tags=["gpu"], retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=io_retry,
      persist_result=False, cache_policy=NO_CACHE)
def process_shard(store: StorageRoot, shard: int, options: PrecomputeOptions, *, store_version: str = "",
                  lock_dir: str | None = None, redis_url: str | None = None) -> dict[str, Any]:
    """Featurize, upsample and store one shard unless the store records it complete; returns its report.

    The models are the store's recipe (rebuilt from its spec, checked against its hashes). The shard's
    lock (files in ``lock_dir`` on this host, or Redis at ``redis_url`` across hosts) is held from the
    store's "is it complete?" to the commit, so runs that meet on a shard do it once: the later one finds
    it complete and skips it. No cache is consulted: the store alone says what is done. ``store_version``
    (when the store was created) keys the lock, so a store made anew is not the old one.
    """
    logger = get_run_logger()
    with held(lock_manager(lock_dir, redis_url), shard_lock_key(store.url, store_version, shard)):
        opened = open_feature_store(store, mode="a")
        if opened.is_complete(shard):  # asked before loading models: a skipped shard costs no model load
            report = ShardReport(shard, skipped=True)
        else:
            bb, up = models.for_spec(opened.spec, options)
            report = precompute_shard(opened, shard, bb, up, **options.run_options())
    if report.skipped:
        logger.info("shard %d already complete in the store: skipped", shard)
    else:
        t = report.times
        # Per-image fits (implicit) run at about one image a minute: "0.0 img/s" would hide the rate.
        logger.info("shard %d: %d written, %d bad, %.3g img/min (read %.2fs, backbone %.2fs, upsample %.2fs, "
                    "write %.2fs)", shard, report.written, len(report.bad), 60 * t.images / max(t.total, 1e-9),
                    t.read, t.backbone, t.upsample, t.write)
        if report.shard_error:
            logger.warning("shard %d is damaged (%s): its readable samples were kept", shard, report.shard_error)
        for bad in report.bad:
            logger.warning("shard %d: bad sample %s: %s", shard, bad["key"], bad["reason"])
        for extra in report.unlisted:
            logger.warning("shard %d: tar member %r not stored: %s", shard, extra["key"], extra["reason"])
    return report.to_dict()
