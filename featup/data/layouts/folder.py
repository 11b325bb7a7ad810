"""A plain folder of images (any depth of sub-folders), optionally with depth maps in a parallel folder."""

from __future__ import annotations

import posixpath
from collections.abc import Iterator

from featup.data.images import MIN_SIDE, ImageError, decode_rgb
from featup.data.layouts._registry import LayoutSource, register_layout
from featup.data.layouts._tree import SourceTree, key_for, read_depth, unreadable
from featup.data.samples import BadSample, Sample
from featup.io import StorageOptions


@register_layout("folder")
def image_folder(
    root: str,
    *,
    depth_root: str | None = None,
    depth_scale: float = 1000.0,
    exif_transpose: bool | None = None,
    min_side: int = MIN_SIDE,
    storage_options: StorageOptions = None,
) -> LayoutSource:
    """Every image under ``root`` in sorted path order; key = the relative path, percent-escaped (``sub/a%2Ejpg``).

    Keys are unique and reversible for any file name (``featup.data.samples.name_for_key``): files that
    differ only in dots or in extension stay apart. A file that cannot be read is recorded, with its path,
    as a bad sample, and the ingest goes on.

    Depth maps, when ``depth_root`` is given, are ``<depth_root>/<same relative path>.npy`` (float,
    metres) or ``.png`` (16-bit, divided by ``depth_scale``). ``exif_transpose`` (camera orientation
    tags) defaults to on without depth maps and off with them, whose pixels follow the stored image.
    """
    if exif_transpose is None:
        exif_transpose = depth_root is None
    tree = SourceTree(root, storage_options)
    depth_tree = SourceTree(depth_root, storage_options) if depth_root else None
    files = tree.find()

    def samples() -> Iterator[Sample | BadSample]:
        for rel in files:
            key = key_for(rel)
            source = posixpath.join(root, rel)
            try:
                image, notes = decode_rgb(tree.read(rel), min_side=min_side, exif_transpose=exif_transpose)
            except ImageError as exc:
                yield BadSample(key, source, str(exc))
                continue
            except OSError as exc:  # a dangling symlink, a symlink loop, no permission: this file only
                yield BadSample(key, source, unreadable(exc))
                continue
            depth, problem = read_depth(depth_tree, posixpath.splitext(rel)[0], depth_scale)
            if problem:
                yield BadSample(key, source, problem)
                continue
            if depth is not None and depth.shape != image.shape[:2]:
                yield BadSample(key, source, f"depth map is {depth.shape}, image is {image.shape[:2]}")
                continue
            meta = {"file": rel, **({"conversions": notes} if notes else {})}
            yield {"__key__": key, "image": image, "label": None, "depth": depth, "meta": meta}

    return LayoutSource(samples(), None, {"layout": "folder", "source": root, "num_files": len(files)})
