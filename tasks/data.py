"""Tasks that move datasets: ingest a layout into shards, read a manifest, read a shard set for evaluation."""

from __future__ import annotations

from typing import Any

from featup_tasks.storage import io_retry, storage_options
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from featup.data import ingest, open_shards
from featup.data.manifest import Manifest, read_manifest
from featup.data.samples import BadSample
from featup.io import StorageRoot


@task(name="ingest-dataset", retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=io_retry,
      persist_result=False)
def ingest_dataset(layout: str, source: str, dest: str, *, name: str | None, max_count: int, max_mb: int,
                   overwrite: bool, storage_secret: str | None, options: dict[str, Any]) -> dict[str, Any]:
    """Write a dataset layout as webdataset shards + manifest.json; returns a summary (URLs, counts, bad samples)."""
    logger = get_run_logger()
    storage = storage_options(storage_secret)
    manifest = ingest(layout, source, dest, storage_options=storage, source_options=storage, name=name,
                      max_count=max_count, max_bytes=max_mb * 2**20, overwrite=overwrite, progress=False, **options)
    bad = [b.to_dict() if hasattr(b, "to_dict") else dict(b) for b in manifest.bad]
    for item in bad:
        logger.warning("bad sample: %s", item)
    logger.info("%s: %d samples in %d shards at %s", manifest.name, manifest.num_samples, len(manifest.shards), dest)
    return {"manifest": manifest.url, "name": manifest.name, "samples": manifest.num_samples,
            "shards": len(manifest.shards), "bad": bad, "classes": manifest.classes}


@task(name="read-manifest", retries=3, retry_delay_seconds=[2, 10, 30], retry_condition_fn=io_retry,
      persist_result=False, cache_policy=NO_CACHE)
def read_dataset_manifest(source: StorageRoot) -> Manifest:
    """The manifest of the dataset at ``source`` (its folder or manifest.json), read once per run and retried
    when storage is briefly unreachable; a missing one fails at once."""
    manifest = read_manifest(source)
    get_run_logger().info("%s: %d samples in %d shards at %s", manifest.name, manifest.num_samples,
                          len(manifest.shards), manifest.url)
    return manifest


@task(name="read-samples", retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=io_retry,
      persist_result=False)
def read_samples(shards: str, *, size: int, limit: int | None, storage_secret: str | None) -> list[dict[str, Any]]:
    """Decoded samples of a shard set (at most ``limit``), for evaluation; bad samples are logged and skipped."""
    logger = get_run_logger()
    samples = []
    for item in open_shards(shards, size=size, storage_options=storage_options(storage_secret)):
        if isinstance(item, BadSample):
            logger.warning("skipping bad sample %s: %s", item.key, item.reason)
            continue
        samples.append(item)
        if limit is not None and len(samples) >= limit:
            break
    logger.info("read %d samples from %s", len(samples), shards)
    return samples
