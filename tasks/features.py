"""Tasks of the precompute pipeline: create the feature store, process one shard."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task

from featup.data.manifest import read_manifest
from featup.pipeline import precompute_shard
from featup.store import FeatureSpec, create_feature_store, open_feature_store
from featup_tasks import models
from featup_tasks.locks import held, host_lock, lock_key, lock_manager
from featup_tasks.storage import io_retry, storage_options


@task(name="create-feature-store", retries=3, retry_delay_seconds=[2, 10, 30], retry_condition_fn=io_retry,
      persist_result=False)
def create_store(shards: str, store_root: str, *, dataset: str, backbone: str, tap: str | None, upsampler: str,
                 checkpoint: str | None, output_size: tuple[int, int], dtype: str, keep_lowres: bool,
                 weights: str | None, random_weights: bool, storage_secret: str | None,
                 lock_dir: str | None = None, redis_url: str | None = None) -> dict[str, Any]:
    """Create (or reopen, when identical) the zarr store for this (dataset, backbone, upsampler); returns its URL.

    With ``lock_dir`` (this host) or ``redis_url`` (every host), runs that meet here create the store one
    after the other: two creators at once would each clear what the other made.
    """
    logger = get_run_logger()
    storage = storage_options(storage_secret)
    manifest = read_manifest(shards, storage_options=storage)
    bb = models.backbone(backbone, tap, weights, random_weights=random_weights)
    up = models.upsampler(upsampler, bb, checkpoint, storage)
    sha = getattr(up, "upsampler_cfg", {}).get("checkpoint_sha256")
    if checkpoint is not None and sha is None:
        from featup.checkpoints import load_checkpoint

        sha = load_checkpoint(checkpoint, storage_options=storage or None)[1].get("sha256")
    h, w = output_size
    spec = FeatureSpec(
        dataset=dataset, backbone=bb.id, upsampler=upsampler, channels=bb.dim, size=(h, w), dtype=dtype,
        lowres_size=(h // bb.stride, w // bb.stride) if keep_lowres else None, tap=bb.tap,
        normalization=bb.norm_config, checkpoint_sha256=sha,
        extra={"weights": bb.weights_source or "random", "image_size": [h, w]},
    )
    with host_lock(lock_dir, "store", store_root, spec.dataset, spec.backbone, spec.upsampler, redis_url=redis_url):
        store = create_feature_store(store_root, spec, manifest, storage_options=storage)
    logger.info("feature store %s: %d shards, %d pending\n%s", store.url, store.num_shards,
                len(store.pending_shards()), store.estimate)
    return {"url": store.url, "pending": store.pending_shards(), "num_shards": store.num_shards,
            "version": str(store.info.get("created"))}


def shard_lock_key(store_url: str, store_version: str, shard: int) -> str:
    """The lock of one shard of one store (as created)."""
    return lock_key("shard", store_url, store_version, shard)


@task(name="precompute-shard", tags=["gpu"], retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=io_retry,
      persist_result=False)
def process_shard(store_url: str, shard: int, *, backbone: str, tap: str | None, upsampler: str,
                  checkpoint: str | None, weights: str | None, random_weights: bool, batch_size: int,
                  device: str, amp: str, num_workers: int, storage_secret: str | None, store_version: str = "",
                  implicit_options: dict[str, Any] | None = None, model_threads: int | None = None,
                  lock_dir: str | None = None, redis_url: str | None = None) -> dict[str, Any]:
    """Featurize, upsample and store one shard unless the store records it complete; returns its report.

    The shard's lock (files in ``lock_dir`` on this host, or Redis at ``redis_url`` across hosts) is
    held from the store's "is it complete?" to the commit, so runs that meet on a shard do it once: the
    later one finds it complete and skips it. No cache is consulted: the store alone says what is done.
    ``store_version`` (when the store was created) keys the lock, so a store made anew is not the old one.
    """
    logger = get_run_logger()
    storage = storage_options(storage_secret)
    bb = models.backbone(backbone, tap, weights, random_weights=random_weights)
    up = models.upsampler(upsampler, bb, checkpoint, storage, implicit_options)
    with held(lock_manager(lock_dir, redis_url), shard_lock_key(store_url, store_version, shard)):
        store = open_feature_store(store_url, mode="a", storage_options=storage)
        report = precompute_shard(store, shard, bb, up, batch_size=batch_size, device=device, amp=amp,
                                  num_workers=num_workers, model_threads=model_threads, storage_options=storage)
    if report.skipped:
        logger.info("shard %d already complete in the store: skipped", shard)
    else:
        t = report.times
        logger.info("shard %d: %d written, %d bad, %.1f img/s (read %.2fs, backbone %.2fs, upsample %.2fs, "
                    "write %.2fs)", shard, report.written, len(report.bad), t.images / max(t.total, 1e-9),
                    t.read, t.backbone, t.upsample, t.write)
        if report.shard_error:
            logger.warning("shard %d is damaged (%s): its readable samples were kept", shard, report.shard_error)
        for bad in report.bad:
            logger.warning("shard %d: bad sample %s: %s", shard, bad["key"], bad["reason"])
        for extra in report.unlisted:
            logger.warning("shard %d: tar member %r not stored: %s", shard, extra["key"], extra["reason"])
    return report.to_dict()
