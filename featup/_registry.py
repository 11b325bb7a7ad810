"""One registry type for everything featup builds by name (backbones, upsamplers, dataset layouts).

timm's pattern: entry points register under a name, one factory looks them up, and an unknown name
raises an error that lists what exists. Sharing the type keeps the registration rules and the error
messages the same everywhere.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

__all__ = ["Registry", "UnknownNameError"]


class UnknownNameError(KeyError, ValueError):
    """A name no entry point is registered under; a KeyError for lookups, a ValueError for arguments."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


class Registry(Generic[T]):
    """Entries of one ``kind`` by name; registering the same object twice is fine, another under a taken name is not."""

    def __init__(self, kind: str, hint: str = ""):
        self.kind = kind
        self.hint = hint  # appended to the unknown-name error (e.g. what else is accepted)
        self._entries: dict[str, T] = {}
        self._owners: dict[str, str] = {}

    def register(self, name: str, entry: T, owner: str) -> T:
        """Add ``entry`` under ``name``; ``owner`` (module.qualname) tells a re-import from a clash."""
        if name in self._entries and self._owners[name] != owner:
            raise ValueError(f"{self.kind} {name!r} is already registered by {self._owners[name]}; pick another name")
        self._entries[name] = entry
        self._owners[name] = owner
        return entry

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            hint = f"; {self.hint}" if self.hint else ""
            raise UnknownNameError(f"unknown {self.kind} {name!r}; registered: {', '.join(self.names())}{hint}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)
