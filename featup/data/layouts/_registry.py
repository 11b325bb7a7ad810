"""The registry of dataset layouts that :func:`featup.data.ingest` can read."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

from featup.data.samples import BadSample, Sample


@dataclasses.dataclass
class LayoutSource:
    """What a layout reader returns: the samples (and bad samples) in a stable order, class names, metadata."""

    samples: Iterable[Sample | BadSample]
    classes: list[str] | None
    meta: dict[str, Any]


LayoutReader = Callable[..., LayoutSource]
_LAYOUTS: dict[str, LayoutReader] = {}


def register_layout(name: str) -> Callable[[LayoutReader], LayoutReader]:
    """Decorator: make a layout reader available under ``name``."""

    def add(fn: LayoutReader) -> LayoutReader:
        if name in _LAYOUTS:
            raise ValueError(f"layout {name!r} is already registered")
        _LAYOUTS[name] = fn
        return fn

    return add


def list_layouts() -> list[str]:
    """Names of the registered layouts."""
    return sorted(_LAYOUTS)


def get_layout(name: str) -> LayoutReader:
    """The reader registered as ``name``; KeyError lists the known layouts."""
    try:
        return _LAYOUTS[name]
    except KeyError:
        raise KeyError(f"unknown dataset layout {name!r}; known layouts: {', '.join(list_layouts())}") from None
