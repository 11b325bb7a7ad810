"""Tasks of the precompute pipeline: create the feature store, process one shard."""

from __future__ import annotations

import contextlib
from typing import Any

from prefect import get_run_logger, task

from featup.data.manifest import read_manifest
from featup.pipeline import precompute_shard
from featup.store import FeatureSpec, create_feature_store, open_feature_store
from tasks import models
from tasks.locks import host_lock
from tasks.storage import io_retry, storage_options


@task(name="create-feature-store", retries=3, retry_delay_seconds=[2, 10, 30], retry_condition_fn=io_retry,
      persist_result=False)
def create_store(shards: str, store_root: str, *, dataset: str, backbone: str, tap: str | None, upsampler: str,
                 checkpoint: str | None, output_size: tuple[int, int], dtype: str, keep_lowres: bool,
                 weights: str | None, random_weights: bool, storage_secret: str | None,
                 lock_dir: str | None = None) -> dict[str, Any]:
    """Create (or reopen, when identical) the zarr store for this (dataset, backbone, upsampler); returns its URL.

    With ``lock_dir``, runs on this host that meet here create the store one after the other: two
    creators at once would each clear what the other made.
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
    with host_lock(lock_dir, "store", store_root, spec.dataset, spec.backbone, spec.upsampler) if lock_dir \
            else contextlib.nullcontext():
        store = create_feature_store(store_root, spec, manifest, storage_options=storage)
    logger.info("feature store %s: %d shards, %d pending\n%s", store.url, store.num_shards,
                len(store.pending_shards()), store.estimate)
    return {"url": store.url, "pending": store.pending_shards(), "num_shards": store.num_shards,
            "version": str(store.info.get("created"))}


@task(name="precompute-shard", tags=["gpu"], retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=io_retry,
      persist_result=False)
def process_shard(store_url: str, shard: int, *, backbone: str, tap: str | None, upsampler: str,
                  checkpoint: str | None, weights: str | None, random_weights: bool, batch_size: int,
                  device: str, amp: str, num_workers: int, storage_secret: str | None, store_version: str = "",
                  implicit_options: dict[str, Any] | None = None, model_threads: int | None = None) -> dict[str, Any]:
    """Featurize, upsample and store one shard (skipped when complete); returns its report.

    ``store_version`` (when the store was created) only keys the shard's cache record and lock, so a
    store deleted and made anew is not mistaken for the old one.
    """
    logger = get_run_logger()
    storage = storage_options(storage_secret)
    store = open_feature_store(store_url, mode="a", storage_options=storage)
    bb = models.backbone(backbone, tap, weights, random_weights=random_weights)
    up = models.upsampler(upsampler, bb, checkpoint, storage, implicit_options)
    report = precompute_shard(store, shard, bb, up, batch_size=batch_size, device=device, amp=amp,
                              num_workers=num_workers, model_threads=model_threads, storage_options=storage)
    if report.skipped:
        logger.info("shard %d already complete: skipped", shard)
    else:
        t = report.times
        logger.info("shard %d: %d written, %d bad, %.1f img/s (read %.2fs, backbone %.2fs, upsample %.2fs, "
                    "write %.2fs)", shard, report.written, len(report.bad), t.images / max(t.total, 1e-9),
                    t.read, t.backbone, t.upsample, t.write)
        for bad in report.bad:
            logger.warning("shard %d: bad sample %s: %s", shard, bad["key"], bad["reason"])
    return report.to_dict()
