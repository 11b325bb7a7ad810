"""The sample contract shared by dataset layouts, offline sets, shard writers and the pipeline.

A sample is a dict::

    {"__key__": str,                  # stable, unique within a dataset, no "." (webdataset splits there)
     "image": np.uint8 H×W×3 RGB,
     "label": np.ndarray H×W int or None,   # class map, IGNORE_INDEX (255) = ignore
     "depth": np.float32 H×W or None,
     "meta": dict}                    # JSON-serialisable

A source that cannot produce a sample yields a :class:`BadSample` in its place, so one unreadable file is
recorded with its reason and the run goes on.
"""

from __future__ import annotations

import dataclasses
import json
import re
import urllib.parse
from typing import Any, TypedDict

import numpy as np

IGNORE_INDEX = 255

# webdataset groups tar members by the text before the first "." and skips names like "__x__".
_KEY_RE = re.compile(r"^(?!__)[^.\s][^.]*$")


class Sample(TypedDict):
    """One dataset sample (see the module docstring for each field's meaning)."""

    __key__: str
    image: np.ndarray
    label: np.ndarray | None
    depth: np.ndarray | None
    meta: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class BadSample:
    """A sample that was skipped, with where it came from and why."""

    key: str | None
    source: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """JSON form, as stored in manifests and reports."""
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        return f"{self.key or '?'} ({self.source}): {self.reason}"


def check_key(key: object) -> str:
    """Return ``key`` if webdataset can carry it unchanged, else raise ValueError saying how to fix it."""
    if not isinstance(key, str) or not _KEY_RE.match(key):
        raise ValueError(
            f"sample key {key!r} is not usable: keys must be non-empty strings without '.', not starting "
            "with '__' or whitespace (webdataset splits a tar member name at its first '.'); "
            "replace dots, e.g. key.replace('.', '_')"
        )
    return key


def _escape(char: str) -> str:
    return "".join(f"%{byte:02X}" for byte in char.encode("utf-8", "surrogateescape"))


def key_for_name(name: str) -> str:
    """A sample key for a file name or relative path that is unique and reversible (:func:`name_for_key`).

    Percent-escapes what webdataset or the key contract cannot carry: '.', '%' itself, control
    characters, whitespace at the start and a leading '__'. So ``dots.in.name.jpg``,
    ``dots_in_name.jpg``, ``same.jpg`` and ``same.png`` get four different keys, whatever the names.
    """
    if not name:
        raise ValueError("an empty name has no key")
    out = []
    for i, char in enumerate(name):
        if (char in "%." or ord(char) < 32 or ord(char) == 127 or (i == 0 and char.isspace())
                or (i == 0 and name.startswith("__"))):
            out.append(_escape(char))
        else:
            out.append(char)
    return "".join(out)


def name_for_key(key: str) -> str:
    """The file name or relative path that :func:`key_for_name` made ``key`` from."""
    return urllib.parse.unquote(key, errors="surrogateescape")


def check_sample(sample: Sample) -> None:
    """Raise ValueError naming the field if ``sample`` breaks the contract."""
    key = check_key(sample.get("__key__"))
    image = sample.get("image")
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"sample {key}: 'image' must be a uint8 H×W×3 RGB array, got {got}")
    h, w = image.shape[:2]
    label = sample.get("label")
    if label is not None:
        if not (isinstance(label, np.ndarray) and label.ndim == 2 and np.issubdtype(label.dtype, np.integer)):
            raise ValueError(f"sample {key}: 'label' must be an integer H×W array or None")
        if label.shape != (h, w):
            raise ValueError(f"sample {key}: label is {label.shape}, image is {(h, w)}; they must match")
        if label.size and (label.min() < 0 or label.max() > np.iinfo(np.uint16).max):
            raise ValueError(f"sample {key}: label values must lie in 0..65535 (ignore = {IGNORE_INDEX})")
    depth = sample.get("depth")
    if depth is not None:
        if not (isinstance(depth, np.ndarray) and depth.ndim == 2 and depth.shape == (h, w)):
            raise ValueError(f"sample {key}: 'depth' must be a float H×W array matching the image, or None")
    try:
        json.dumps(sample.get("meta", {}))
    except TypeError as exc:
        raise ValueError(f"sample {key}: 'meta' must be JSON-serialisable ({exc})") from None
