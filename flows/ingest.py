"""Flow: a dataset layout (folder, COCO-Stuff, ADE20K, offline benchmark sets) → webdataset shards."""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from prefect import flow
from pydantic import Field

from featup_flows.params import ParameterError, check_local_input

Layout = Literal["folder", "cocostuff", "ade20k", "fashion_mosaics", "depth_scenes", "photos", "pool"]
# Layouts built from installed packages: their source is "-".
OFFLINE = ("fashion_mosaics", "depth_scenes", "photos", "pool")


def _has_image(root: str) -> bool:
    """Whether a local folder holds at least one image file (stops at the first: a dataset can be large)."""
    from featup.data.layouts._tree import IMAGE_SUFFIXES

    for _, _, files in os.walk(root):
        if any(f.lower().endswith(IMAGE_SUFFIXES) for f in files):
            return True
    return False


def _layout_options(layout: str) -> list[str]:
    """The options a layout's reader takes (its keyword-only parameters), and the shard image format."""
    from featup.data.layouts import get_layout

    reader = inspect.signature(get_layout(layout)).parameters.values()
    return sorted({p.name for p in reader if p.kind is p.KEYWORD_ONLY} - {"storage_options"} | {"image_format"})


def check_arguments(params: Mapping[str, Any]) -> None:
    """The source fits the layout: "-" for the offline sets, an existing folder with images for the others; the
    options are ones the layout takes."""
    source, layout = params["source"], params["layout"]
    unknown = sorted(set(params.get("options") or {}) - set(_layout_options(layout)))
    if unknown:
        raise ParameterError("options", f"the {layout} layout takes no option {unknown[0]!r}; it takes "
                                        f"{', '.join(_layout_options(layout))}")
    if layout == "fashion_mosaics":  # "-" (Debian's package) or a folder holding the Fashion-MNIST IDX files
        check_local_input("source", source)
        return
    if layout in OFFLINE:
        if source != "-":
            raise ParameterError("source", f"the {layout} layout is built from installed packages: pass `source` -")
        return
    if source == "-":
        raise ParameterError("source", f"the {layout} layout reads a dataset folder: give its path or URL "
                                       f"(\"-\" is for {', '.join(OFFLINE)})")
    check_local_input("source", source)
    if "://" not in source:
        if not os.path.isdir(source):
            raise ParameterError("source", f"{source} is a file, not a dataset folder")
        if not _has_image(source):
            raise ParameterError("source", f"no image files under {source}: check the path (and `layout`)")


@flow(name="ingest", log_prints=True)
def ingest(
    source: str,
    output: str,
    layout: Layout = "folder",
    name: str | None = None,
    shard_samples: Annotated[int, Field(ge=1)] = 1000,
    shard_mb: Annotated[int, Field(ge=1)] = 256,
    options: dict[str, Any] | None = None,
    overwrite: bool = False,
    storage_secret: str | None = None,
) -> dict[str, Any]:
    """Write a dataset as webdataset shards plus a manifest.json (shard list, counts, class names).

    Unreadable images are recorded as bad samples (with their reason) in the manifest and the run's
    logs; the rest of the dataset is written.

    Args:
        source: Dataset root (local path or s3://); "-" for the offline sets (fashion_mosaics, depth_scenes,
            photos, pool).
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
    check_arguments(locals())
    # Imported here so that `featup ingest --help` skips torch and webdataset (seconds on a small machine).
    from featup_tasks.data import ingest_dataset

    return ingest_dataset(layout, source, output, name=name, max_count=shard_samples, max_mb=shard_mb,
                          overwrite=overwrite, storage_secret=storage_secret, options=dict(options or {}))
