"""Datasets as webdataset shards on local disk or object storage: layouts in, shards out, tensors back.

Names are imported on first use, so that reading a manifest (``featup.data.manifest``) does not load
torch, which webdataset and the reader import.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "IGNORE_INDEX": "samples",
    "BadSample": "samples",
    "Sample": "samples",
    "check_sample": "samples",
    "ImageError": "images",
    "decode_rgb": "images",
    "Manifest": "manifest",
    "ShardInfo": "manifest",
    "read_manifest": "manifest",
    "write_shards": "shards",
    "collate_samples": "reading",
    "make_loader": "reading",
    "open_shards": "reading",
    "shard_urls": "reading",
    "register_gopen_schemes": "storage",
    "get_layout": "layouts",
    "ingest": "layouts",
    "list_layouts": "layouts",
    "register_layout": "layouts",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'featup.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"featup.data.{_EXPORTS[name]}"), name)


def __dir__() -> list[str]:
    return __all__
