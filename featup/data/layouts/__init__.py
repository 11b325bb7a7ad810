"""Dataset layouts (plain folder, COCO-Stuff, ADE20K) and :func:`ingest`, which writes one into shards."""

from __future__ import annotations

from typing import Any

from featup.data.layouts import ade20k, cocostuff, folder, offline, pool  # noqa: F401  (each registers its layout)
from featup.data.layouts._registry import (
    LayoutSource,
    get_layout,
    list_layouts,
    register_layout,
)
from featup.data.manifest import Manifest
from featup.data.shards import write_shards
from featup.io import StorageOptions

__all__ = ["LayoutSource", "get_layout", "ingest", "list_layouts", "register_layout"]


def ingest(
    layout: str,
    source: str,
    dest: str,
    *,
    source_options: StorageOptions = None,
    storage_options: StorageOptions = None,
    name: str | None = None,
    max_count: int = 1000,
    max_bytes: int = 256 * 2**20,
    image_format: str = "jpg",
    overwrite: bool = False,
    progress: bool = True,
    **layout_options: Any,
) -> Manifest:
    """Read a dataset in ``layout`` from ``source`` and write it as shards + manifest.json at ``dest``.

    ``layout_options`` go to the layout reader (split, coarse, image_list, depth_root, …);
    ``source_options`` / ``storage_options`` are the fsspec options of the source and the destination.
    Unreadable samples are skipped and listed, with reasons, in ``manifest.bad``.
    """
    found = get_layout(layout)(source, storage_options=source_options, **layout_options)
    return write_shards(
        found.samples,
        dest,
        name=name,
        classes=found.classes,
        max_count=max_count,
        max_bytes=max_bytes,
        image_format=image_format,
        meta=found.meta,
        overwrite=overwrite,
        storage_options=storage_options,
        progress=progress,
    )
