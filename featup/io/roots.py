"""A storage location as one typed value: a URL and the fsspec options that reach it, travelling together.

Code that reads or writes somewhere takes a ``StorageRoot`` instead of a URL plus loose
``storage_options`` handed down every layer. The options (credentials, endpoint) never show in a repr, a
log line or an exception message.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

import fsspec

from featup.io.files import filesystem, is_local, join_url


@dataclasses.dataclass(frozen=True, eq=True)
class StorageRoot:
    """Where something lives (a local path, ``file://``, ``s3://``, ``memory://`` URL) and how to reach it."""

    url: str
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.url, str) or not self.url:
            raise ValueError(f"a storage root needs a non-empty URL or path, got {self.url!r}")
        object.__setattr__(self, "options", dict(self.options or {}))

    def __hash__(self) -> int:  # the options are a dict: hash what they hold
        return hash((self.url, json.dumps(self.options, sort_keys=True, default=str)))

    def __str__(self) -> str:
        return self.url

    def join(self, *parts: str) -> StorageRoot:
        """The location ``parts`` below this one, reached with the same options."""
        return StorageRoot(join_url(self.url, *parts), self.options)

    @property
    def parent(self) -> StorageRoot:
        """The folder holding this location."""
        return StorageRoot(self.url.rstrip("/").rsplit("/", 1)[0], self.options)

    @property
    def is_local(self) -> bool:
        """True for a plain path or a ``file://`` URL."""
        return is_local(self.url)

    def filesystem(self) -> tuple[fsspec.AbstractFileSystem, str]:
        """The fsspec filesystem serving this location and the path inside it."""
        return filesystem(self.url, self.options)


def as_root(location: str | StorageRoot, storage_options: Mapping[str, Any] | None = None) -> StorageRoot:
    """``location`` as a StorageRoot: a root as is, a URL with ``storage_options`` (not both)."""
    if isinstance(location, StorageRoot):
        if storage_options:
            raise ValueError("storage_options were given with a StorageRoot, which carries its own options")
        return location
    return StorageRoot(str(location), storage_options or {})
