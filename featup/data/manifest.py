"""``manifest.json``: the list of a dataset's shards, their sample counts and keys, its classes and bad samples.

Written beside the shards after the last shard is complete, so a manifest never names a shard that is
not there. The feature store sizes and lays out its rows from it.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from featup.data.samples import IGNORE_INDEX, BadSample
from featup.io import (
    StorageOptions,
    StorageRoot,
    as_root,
    atomic_write,
    join_url,
    read_bytes,
)

MANIFEST_NAME = "manifest.json"
FORMAT = "featup-shards/1"


@dataclasses.dataclass(frozen=True)
class ShardInfo:
    """One ``.tar`` shard: its file name (relative to the manifest), size, and sample keys in order."""

    name: str
    count: int
    bytes: int
    keys: tuple[str, ...]


@dataclasses.dataclass
class Manifest:
    """A sharded dataset as written by :func:`featup.data.write_shards`."""

    name: str
    shards: list[ShardInfo]
    classes: list[str] | None = None
    ignore_index: int = IGNORE_INDEX
    has_label: bool = False
    has_depth: bool = False
    image_format: str = "jpg"
    bad: list[BadSample] = dataclasses.field(default_factory=list)
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    featup_version: str = ""
    url: str | None = None  # where it lives; set on write and read, not stored

    @property
    def num_samples(self) -> int:
        """Samples in all shards (bad samples excluded: they were never written)."""
        return sum(s.count for s in self.shards)

    @property
    def base_url(self) -> str:
        """The folder holding the shards."""
        if self.url is None:
            raise ValueError("this manifest has no URL yet: write it or read it from storage first")
        return self.url.rsplit("/", 1)[0]

    def shard_urls(self) -> list[str]:
        """Full URLs of the shards, in order."""
        return [join_url(self.base_url, s.name) for s in self.shards]

    def to_json(self) -> str:
        """The JSON text stored as ``manifest.json``."""
        body = {
            "format": FORMAT,
            "name": self.name,
            "num_samples": self.num_samples,
            "classes": self.classes,
            "ignore_index": self.ignore_index,
            "has_label": self.has_label,
            "has_depth": self.has_depth,
            "image_format": self.image_format,
            "featup_version": self.featup_version,
            "meta": self.meta,
            "shards": [{"name": s.name, "count": s.count, "bytes": s.bytes, "keys": list(s.keys)} for s in self.shards],
            "bad": [b.to_dict() for b in self.bad],
        }
        return json.dumps(body, indent=1)

    @classmethod
    def from_json(cls, text: str | bytes, *, url: str | None = None) -> Manifest:
        """Parse ``manifest.json`` text; ValueError if it is not a featup shard manifest."""
        try:
            body = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{url or 'manifest'} is not valid JSON ({exc})") from None
        if not isinstance(body, dict) or body.get("format") != FORMAT:
            raise ValueError(f"{url or 'manifest'} is not a featup shard manifest (format {FORMAT!r} expected)")
        return cls(
            name=body["name"],
            shards=[ShardInfo(s["name"], s["count"], s["bytes"], tuple(s["keys"])) for s in body["shards"]],
            classes=body.get("classes"),
            ignore_index=body.get("ignore_index", IGNORE_INDEX),
            has_label=body.get("has_label", False),
            has_depth=body.get("has_depth", False),
            image_format=body.get("image_format", "jpg"),
            bad=[BadSample(**b) for b in body.get("bad", [])],
            meta=body.get("meta", {}),
            featup_version=body.get("featup_version", ""),
            url=url,
        )


def manifest_url(url: str) -> str:
    """The manifest URL for a dataset folder URL (a URL already ending in .json is returned as is)."""
    return url if url.endswith(".json") else join_url(url, MANIFEST_NAME)


def read_manifest(location: str | StorageRoot, *, storage_options: StorageOptions = None) -> Manifest:
    """Load the manifest of the dataset at ``location`` (its folder or its ``manifest.json``; a URL or a root)."""
    root = as_root(location, storage_options)
    target = manifest_url(root.url)
    try:
        text = read_bytes(target, root.options)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"no shard manifest at {target}: check the URL, or write the shards first "
            "(featup.data.ingest / write_shards)"
        ) from None
    return Manifest.from_json(text, url=target)


def write_manifest(manifest: Manifest, url: str, *, storage_options: StorageOptions = None) -> Manifest:
    """Store ``manifest`` at ``url`` (folder or .json URL) atomically; returns it with ``url`` set."""
    target = manifest_url(url)
    with atomic_write(target, storage_options) as f:
        f.write(manifest.to_json().encode())
    manifest.url = target
    return manifest
