"""Flow: shards → backbone → upsampler → zarr feature store, one task per shard, resumable.

The manifest is read once (a task with retries), the models are loaded once per process (the store's
spec is their recipe), and the shards are mapped onto one task each; docs/architecture.md follows one
image from its shard to its zarr chunk.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Any, Literal

from featup_tasks.data import read_dataset_manifest
from featup_tasks.features import create_store, process_shard
from featup_tasks.storage import storage_options
from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import (
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.futures import as_completed
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner
from tqdm import tqdm

from featup.io import StorageRoot
from featup_flows.params import check_backbone, check_local_input
from featup.pipeline import PrecomputeOptions

Upsampler = Literal["jbu", "implicit", "bilinear", "resize_conv"]
DEFAULT_LOCK_DIR = os.path.join(Path.home(), ".prefect", "featup-shard-locks")
REDIS_URL_ENV = "FEATUP_REDIS_URL"


def check_arguments(params: dict[str, Any]) -> None:
    """A known backbone; local shards, checkpoint and weights that exist (before any server or model starts)."""
    check_backbone("backbone", params["backbone"])
    for name in ("shards", "checkpoint", "weights"):
        check_local_input(name, params.get(name))


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
        checkpoint: Upsampler checkpoint path or URL; default: the one featup ships for the backbone. The
            store records its sha256 and every shard task checks it.
        tap: Backbone layer (e.g. stride16); default: the backbone's own.
        output_size: Side of the square input image and of the stored high-res features, in pixels.
        dtype: Stored dtype of the features.
        keep_lowres: Also store the backbone's low-res features.
        batch_size: Images per forward pass.
        device: auto (GPU when present), cpu or cuda[:N].
        amp: Autocast dtype for the backbone and upsampler (float32 = off).
        concurrency: Shards processed at once by this run (threads, or Dask workers).
        num_workers: Threads decoding images ahead of the model (0 = decode inline, between batches).
        model_threads: CPU threads of the model (default: torch's); on few cores with a cheap upsampler, one
            fewer than the cores leaves the store writer a core and speeds the whole pipeline up.
        dask_address: Address of an existing Dask scheduler to run shard tasks on.
        dask_workers: Start a local Dask cluster of this many workers (0 = no Dask).
        weights: Backbone weights path or URL; the store records their file name and sha256 (not the path),
            and every shard task checks the weights it finds against them.
        random_weights: Use random backbone weights (for tests and smoke runs).
        dataset: Dataset name in the store; default: the manifest's name.
        lock_dir: Folder for the store and shard locks shared by the runs of this host (runs meeting on a
            shard wait, and the later one skips it).
        redis_url: Redis server for the locks instead, shared by the runs of every host (e.g.
            redis://host:6379/0); default: the FEATUP_REDIS_URL environment variable, else lock_dir.
        storage_secret: Name of a Prefect Secret block holding fsspec storage options as JSON.
    """
    check_arguments(locals())
    logger = get_run_logger()
    redis_url = redis_url or os.environ.get(REDIS_URL_ENV) or None
    storage = storage_options(storage_secret)  # one Secret read; every location below carries its options
    manifest = read_dataset_manifest(StorageRoot(shards, storage))
    options = PrecomputeOptions(batch_size=batch_size, device=device, amp=amp, num_workers=num_workers,
                                model_threads=model_threads,
                                weights=StorageRoot(weights, storage) if weights else None,
                                checkpoint=StorageRoot(checkpoint, storage) if checkpoint else None)
    created = create_store(manifest, StorageRoot(store, storage), dataset=dataset or manifest.name,
                           backbone=backbone, tap=tap, upsampler=upsampler, output_size=(output_size, output_size),
                           dtype=dtype, keep_lowres=keep_lowres, random_weights=random_weights, options=options,
                           lock_dir=lock_dir, redis_url=redis_url)
    url, total, pending = created.root.url, created.num_shards, created.pending
    logger.info("%d of %d shards pending in %s", len(pending), total, url)
    progress = create_progress_artifact(progress=100.0 * (total - len(pending)) / total,
                                        key="precompute-progress", description=f"shards done in {url}")
    runner = _task_runner(concurrency, dask_address, dask_workers)
    reports = _run_shards.with_options(task_runner=runner)(
        created.root, _run_order(pending), options, created.version, lock_dir, redis_url, str(progress), total)
    bad = [dict(shard=r["shard"], **b) for r in reports for b in r["bad"]]
    unlisted = [dict(shard=r["shard"], **b) for r in reports for b in r["unlisted"]]
    damaged = {r["shard"]: r["shard_error"] for r in reports if r["shard_error"]}
    written = sum(r["written"] for r in reports if not r["skipped"])
    create_table_artifact(key="precompute-bad-samples",
                          table=bad + unlisted or [{"shard": "-", "key": "-", "reason": "none"}],
                          description=f"bad samples in {url} (and tar members not in the manifest)")
    summary = {"store": url, "shards": total, "processed": sum(not r["skipped"] for r in reports),
               "skipped": total - len(pending) + sum(r["skipped"] for r in reports), "written": written,
               "bad": len(bad), "unlisted": len(unlisted), "damaged_shards": sorted(damaged)}
    if bad or unlisted:
        logger.warning("%d bad samples recorded in the store (%d damaged shards), %d tar members not in the "
                       "manifest: see the precompute-bad-samples artifact or store.bad_samples()",
                       len(bad), len(damaged), len(unlisted))
    logger.info("done: %s", summary)
    return summary


def _run_order(pending: list[int]) -> list[int]:
    """The pending shards in an order of this run's own (a hash of its id): runs that start together, or one
    after the other, meet on few shards and split the rest instead of trailing each other."""
    run = str(flow_run.get_id() or "")
    return sorted(pending, key=lambda shard: hashlib.sha256(f"{run}/{shard}".encode()).digest())


@flow(name="precompute-shards")
def _run_shards(store: StorageRoot, shards: list[int], options: PrecomputeOptions, store_version: str,
                lock_dir: str | None, redis_url: str | None, progress_id: str, total: int) -> list[dict[str, Any]]:
    """One shard task per shard, mapped on this sub-flow's task runner; progress as they finish.

    The task runner bounds how many shards run at once (``concurrency`` threads, or the Dask workers); the
    tasks' ``gpu`` tag lets a Prefect tag concurrency limit bound them across runs too. Each task asks the
    store, under the shard's lock, whether its shard is still to do.
    """
    futures = process_shard.map(unmapped(store), shards, unmapped(options), store_version=unmapped(store_version),
                                lock_dir=unmapped(lock_dir), redis_url=unmapped(redis_url))
    done = total - len(shards)
    reports = []
    with tqdm(total=total, initial=done, unit="shard", desc="precompute", disable=not sys.stderr.isatty()) as bar:
        for future in as_completed(futures):
            reports.append(dict(future.result()))
            done += 1
            bar.update()
            update_progress_artifact(progress_id, progress=100.0 * done / total)
    return sorted(reports, key=lambda r: r["shard"])


def _task_runner(concurrency: int, dask_address: str | None, dask_workers: int):
    if dask_address or dask_workers:
        from prefect_dask import DaskTaskRunner

        if dask_address:
            return DaskTaskRunner(address=dask_address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": dask_workers, "threads_per_worker": 1,
                                              "processes": True})
    return ThreadPoolTaskRunner(max_workers=max(1, concurrency))
