"""Flow: shards → backbone → upsampler → zarr feature store, one task per shard, resumable."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from featup.pipeline import ShardReport
from featup.store import open_feature_store
from featup_tasks.features import create_store, process_shard, shard_lock_key
from featup_tasks.locks import lock_manager
from featup_tasks.storage import storage_options

Upsampler = Literal["jbu", "implicit", "bilinear", "resize_conv"]
DEFAULT_LOCK_DIR = os.path.join(Path.home(), ".prefect", "featup-shard-locks")
REDIS_URL_ENV = "FEATUP_REDIS_URL"


@flow(name="precompute-features", log_prints=True)
def precompute_features(
    shards: str,
    store: str,
    backbone: str = "efficientnet_lite0",
    upsampler: Upsampler = "jbu",
    checkpoint: str | None = None,
    tap: str | None = None,
    output_size: int = 224,
    dtype: Literal["float16", "bfloat16", "float32"] = "float16",
    keep_lowres: bool = True,
    batch_size: int = 8,
    device: str = "auto",
    amp: Literal["float32", "bfloat16", "float16"] = "float32",
    concurrency: int = 1,
    num_workers: int = 1,
    model_threads: int | None = None,
    dask_address: str | None = None,
    dask_workers: int = 0,
    weights: str | None = None,
    random_weights: bool = False,
    dataset: str | None = None,
    lock_dir: str = DEFAULT_LOCK_DIR,
    redis_url: str | None = None,
    storage_secret: str | None = None,
) -> dict[str, Any]:
    """Compute high-resolution features for every shard of a dataset into a zarr store.

    The store alone says what is done: shards it records complete are skipped, every other shard is
    computed, so re-running finishes what is missing. Bad samples (undecodable images, the unread rest
    of a damaged or missing shard) are recorded in the store with their reason and listed in the run's
    table artifact and summary; the run goes on to the other shards.

    Args:
        shards: Dataset folder or manifest.json URL written by the ingest flow (local path or s3://).
        store: Root URL of feature stores; the group is <store>/<dataset>/<backbone>/<upsampler>.
        backbone: Backbone name (featup backbones) or any timm model name.
        upsampler: jbu (trained checkpoint), implicit (fitted per image), bilinear or resize_conv.
        checkpoint: Upsampler checkpoint path or URL; default: the one featup ships for the backbone.
        tap: Backbone layer (e.g. stride16); default: the backbone's own.
        output_size: Side of the square input image and of the stored high-res features, in pixels.
        dtype: Stored dtype of the features.
        keep_lowres: Also store the backbone's low-res features.
        batch_size: Images per forward pass.
        device: auto (GPU when present), cpu or cuda[:N].
        amp: Autocast dtype for the backbone and upsampler (float32 = off).
        concurrency: Shards processed at once by this run (threads, or Dask workers).
        num_workers: DataLoader worker processes reading and decoding ahead of the model (0 = inline).
        model_threads: CPU threads of the model (default: torch's); on few cores with a cheap upsampler, one
            fewer than the cores leaves the store writer a core and speeds the whole pipeline up.
        dask_address: Address of an existing Dask scheduler to run shard tasks on.
        dask_workers: Start a local Dask cluster of this many workers (0 = no Dask).
        weights: Backbone weights path or URL.
        random_weights: Use random backbone weights (for tests and smoke runs).
        dataset: Dataset name in the store; default: the manifest's name.
        lock_dir: Folder for the store and shard locks shared by the runs of this host (runs meeting on a
            shard wait, and the later one skips it).
        redis_url: Redis server for the locks instead, shared by the runs of every host (e.g.
            redis://host:6379/0); default: the FEATUP_REDIS_URL environment variable, else lock_dir.
        storage_secret: Name of a Prefect Secret block holding fsspec storage options as JSON.
    """
    logger = get_run_logger()
    redis_url = redis_url or os.environ.get(REDIS_URL_ENV) or None
    if dataset is None:
        from featup.data.manifest import read_manifest

        dataset = read_manifest(shards, storage_options=storage_options(storage_secret)).name
    created = create_store(shards, store, dataset=dataset, backbone=backbone, tap=tap, upsampler=upsampler,
                           checkpoint=checkpoint, output_size=(output_size, output_size), dtype=dtype,
                           keep_lowres=keep_lowres, weights=weights, random_weights=random_weights,
                           storage_secret=storage_secret, lock_dir=lock_dir, redis_url=redis_url)
    pending = created["pending"]
    total = created["num_shards"]
    logger.info("%d of %d shards pending in %s", len(pending), total, created["url"])
    progress = create_progress_artifact(progress=100.0 * (total - len(pending)) / total,
                                        key="precompute-progress", description=f"shards done in {created['url']}")
    options = dict(backbone=backbone, tap=tap, upsampler=upsampler, checkpoint=checkpoint, weights=weights,
                   random_weights=random_weights, batch_size=batch_size, device=device, amp=amp,
                   num_workers=num_workers, model_threads=model_threads, storage_secret=storage_secret,
                   store_version=created["version"], lock_dir=lock_dir, redis_url=redis_url)
    runner = _task_runner(concurrency, dask_address, dask_workers)
    reports = _run_shards.with_options(task_runner=runner)(created["url"], pending, options, str(progress),
                                                         total, max(1, concurrency, dask_workers))
    bad = [dict(shard=r["shard"], **b) for r in reports for b in r["bad"]]
    unlisted = [dict(shard=r["shard"], **b) for r in reports for b in r["unlisted"]]
    damaged = {r["shard"]: r["shard_error"] for r in reports if r["shard_error"]}
    written = sum(r["written"] for r in reports if not r["skipped"])
    create_table_artifact(key="precompute-bad-samples",
                          table=bad + unlisted or [{"shard": "-", "key": "-", "reason": "none"}],
                          description=f"bad samples in {created['url']} (and tar members not in the manifest)")
    summary = {"store": created["url"], "shards": total, "processed": sum(not r["skipped"] for r in reports),
               "skipped": total - len(pending) + sum(r["skipped"] for r in reports), "written": written,
               "bad": len(bad), "unlisted": len(unlisted), "damaged_shards": sorted(damaged)}
    if bad or unlisted:
        logger.warning("%d bad samples recorded in the store (%d damaged shards), %d tar members not in the "
                       "manifest: see the precompute-bad-samples artifact or store.bad_samples()",
                       len(bad), len(damaged), len(unlisted))
    logger.info("done: %s", summary)
    return summary


@flow(name="precompute-shards")
def _run_shards(store_url: str, pending: list[int], options: dict[str, Any], progress_id: str, total: int,
                concurrency: int = 1) -> list[dict[str, Any]]:
    """Run one task per pending shard (on this subflow's task runner); update progress as they finish.

    At most ``concurrency`` shards are in flight. The next one taken is one no other run holds and the
    store does not yet record complete (another run may have finished it since this run listed it), so
    runs started together, or one after the other, split the shards instead of trailing each other.
    """
    locks = lock_manager(options["lock_dir"], options["redis_url"])
    store = open_feature_store(store_url, storage_options=storage_options(options["storage_secret"]))
    todo, running, reports = list(pending), {}, []
    done = total - len(pending)

    def take() -> int | None:
        for shard in list(todo):
            if locks is not None and locks.is_locked(shard_lock_key(store_url, options["store_version"], shard)):
                continue
            todo.remove(shard)
            if not store.is_complete(shard):
                return shard
            reports.append(ShardReport(shard, skipped=True).to_dict())  # done by another run meanwhile
            finished()
        # all left are held elsewhere: wait for one; the shard task asks the store again under the lock
        return todo.pop(0) if todo else None

    def finished() -> None:
        nonlocal done
        done += 1
        update_progress_artifact(progress_id, progress=100.0 * done / total)

    while todo or running:
        while todo and len(running) < max(1, concurrency):
            shard = take()
            if shard is not None:
                running[process_shard.submit(store_url, shard, **options)] = shard
        if not running:
            break
        future = next(as_completed(list(running)))
        del running[future]
        reports.append(dict(future.result()))
        finished()
    return sorted(reports, key=lambda r: r["shard"])


def _task_runner(concurrency: int, dask_address: str | None, dask_workers: int):
    if dask_address or dask_workers:
        from prefect_dask import DaskTaskRunner

        if dask_address:
            return DaskTaskRunner(address=dask_address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": dask_workers, "threads_per_worker": 1,
                                              "processes": True})
    return ThreadPoolTaskRunner(max_workers=max(1, concurrency))
