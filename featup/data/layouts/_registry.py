"""The registry of dataset layouts that :func:`featup.data.ingest` can read."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

from featup._registry import Registry
from featup.data.samples import BadSample, Sample


@dataclasses.dataclass
class LayoutSource:
    """What a layout reader returns: the samples (and bad samples) in a stable order, class names, metadata."""

    samples: Iterable[Sample | BadSample]
    classes: list[str] | None
    meta: dict[str, Any]


LayoutReader = Callable[..., LayoutSource]
LAYOUTS: Registry[LayoutReader] = Registry("dataset layout")


def register_layout(name: str) -> Callable[[LayoutReader], LayoutReader]:
    """Decorator: make a layout reader available under ``name``."""

    def add(fn: LayoutReader) -> LayoutReader:
        return LAYOUTS.register(name, fn, f"{fn.__module__}.{fn.__qualname__}")

    return add


def list_layouts() -> list[str]:
    """Names of the registered layouts, sorted."""
    return LAYOUTS.names()


def get_layout(name: str) -> LayoutReader:
    """The reader registered as ``name``; an unknown name raises an error (KeyError and ValueError) listing them."""
    return LAYOUTS[name]
