"""Flow: a dataset layout (folder, COCO-Stuff, ADE20K, offline benchmark sets) → webdataset shards."""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow

from featup_tasks.data import ingest_dataset

Layout = Literal["folder", "cocostuff", "ade20k", "fashion_mosaics", "depth_scenes", "photos", "pool"]


@flow(name="ingest", log_prints=True)
def ingest(
    source: str,
    output: str,
    layout: Layout = "folder",
    name: str | None = None,
    shard_samples: int = 1000,
    shard_mb: int = 256,
    options: dict[str, Any] | None = None,
    overwrite: bool = False,
    storage_secret: str | None = None,
) -> dict[str, Any]:
    """Write a dataset as webdataset shards plus a manifest.json (shard list, counts, class names).

    Unreadable images are recorded as bad samples (with their reason) in the manifest and the run's
    logs; the rest of the dataset is written.

    Args:
        source: Dataset root (local path or s3://); "-" for the offline sets (fashion_mosaics, depth_scenes, photos).
        output: Folder (local path or s3://) for the shards and manifest.json.
        layout: How the source is organised.
        name: Dataset name recorded in the manifest (default: derived from the output folder).
        shard_samples: At most this many samples per shard.
        shard_mb: At most about this many MiB per shard.
        options: Layout options as JSON, e.g. {"split": "val2017"} for cocostuff, {"n": 64, "split": "test"}
            for fashion_mosaics.
        overwrite: Replace an existing dataset at output.
        storage_secret: Name of a Prefect Secret block holding fsspec storage options as JSON.
    """
    return ingest_dataset(layout, source, output, name=name, max_count=shard_samples, max_mb=shard_mb,
                          overwrite=overwrite, storage_secret=storage_secret, options=dict(options or {}))
