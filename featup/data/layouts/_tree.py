"""A dataset's source folder on any fsspec URL: list files, read them, find their optional depth maps."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

import numpy as np

from featup.data.images import ImageError, decode_depth, decode_label, decode_rgb
from featup.data.samples import key_for_name
from featup.io import StorageOptions, filesystem, is_transient

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".ppm", ".tif", ".tiff", ".gif")
DEPTH_SUFFIXES = (".npy", ".png")


class SourceTree:
    """Files under ``root`` (a local path or URL), addressed by paths relative to it."""

    def __init__(self, root: str, storage_options: StorageOptions = None):
        self.url = root
        self.fs, self.root = filesystem(root, storage_options)
        if not self.fs.isdir(self.root):
            raise FileNotFoundError(f"dataset folder {root} does not exist (or is not a folder): check the path")

    def find(self, sub: str = "", suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> list[str]:
        """Relative paths of the files under ``sub`` whose suffix is in ``suffixes``, sorted; none is an error."""
        base = posixpath.join(self.root, sub) if sub else self.root
        if not self.fs.isdir(base):
            raise FileNotFoundError(f"{posixpath.join(self.url, sub)} does not exist: is this the right layout/split?")
        found = self.fs.find(base)
        rels = (posixpath.relpath(p, self.root) for p in found)
        files = sorted(r for r in rels if r.lower().endswith(suffixes))
        if not files:  # an empty dataset is a wrong path or layout, never something to write as shards
            raise FileNotFoundError(f"no {'/'.join(s.lstrip('.') for s in suffixes)} files under "
                                    f"{posixpath.join(self.url, sub) if sub else self.url}: is this the right folder/layout/split?")
        return files

    def exists(self, rel: str) -> bool:
        """Whether ``rel`` exists."""
        return self.fs.exists(posixpath.join(self.root, rel))

    def read(self, rel: str) -> bytes:
        """The bytes of ``rel``."""
        return self.fs.cat_file(posixpath.join(self.root, rel))


def key_for(name: str) -> str:
    """A stable sample key for a name (a relative path, or a stem): unique and reversible, see key_for_name."""
    return key_for_name(name)


def unreadable(exc: OSError) -> str:
    """Why a file could not be read (a dangling link, a link loop, no permission), for its BadSample; a fault that
    passes (network, throttling) is raised again instead, so that the ingest is retried rather than the file
    dropped."""
    if is_transient(exc):
        raise exc
    return f"unreadable file: {type(exc).__name__}: {exc.strerror or exc}"


def read_depth(tree: SourceTree | None, stem: str, scale: float) -> tuple[np.ndarray | None, str | None]:
    """The depth map ``<stem>.npy`` or ``<stem>.png`` in ``tree`` (None if absent) and a problem, if any."""
    if tree is None:
        return None, None
    for suffix in DEPTH_SUFFIXES:
        rel = stem + suffix
        if tree.exists(rel):
            try:
                return decode_depth(tree.read(rel), name=rel, scale=scale), None
            except ImageError as exc:
                return None, f"depth map {rel}: {exc}"
            except OSError as exc:
                return None, f"depth map {rel}: {unreadable(exc)}"
    return None, None


@dataclass
class LabelledImage:
    """An image read with its label map (raw class ids) and optional depth, and the decoder's conversions."""

    image: np.ndarray
    label: np.ndarray
    depth: np.ndarray | None
    notes: list[str]


def read_labelled(tree: SourceTree, image_rel: str, label_rel: str, depth_tree: SourceTree | None,
                  depth_stem: str, depth_scale: float, min_side: int) -> LabelledImage | str:
    """Read an image, its same-sized label map and its depth map, or say what is wrong with them."""
    try:
        image, notes = decode_rgb(tree.read(image_rel), min_side=min_side)
    except FileNotFoundError:
        return "listed image is missing"
    except ImageError as exc:
        return str(exc)
    except OSError as exc:
        return unreadable(exc)
    try:
        label = decode_label(tree.read(label_rel))
    except FileNotFoundError:
        return f"no label map {label_rel}"
    except ImageError as exc:
        return f"label map {label_rel}: {exc}"
    except OSError as exc:
        return f"label map {label_rel}: {unreadable(exc)}"
    if label.shape != image.shape[:2]:
        return f"label map is {label.shape}, image is {image.shape[:2]}"
    depth, problem = read_depth(depth_tree, depth_stem, depth_scale)
    return problem if problem else LabelledImage(image, label, depth, notes)
