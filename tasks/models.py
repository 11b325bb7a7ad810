"""Backbones and upsamplers loaded once per worker process and reused by every task that runs there."""

from __future__ import annotations

import functools
import json
from typing import Any

from torch import nn

from featup.backbones import Backbone, load_backbone
from featup.pipeline import ImplicitPerImage
from featup.upsamplers import load_upsampler


@functools.lru_cache(maxsize=4)
def backbone(name: str, tap: str | None = None, weights: str | None = None, use_norm: bool = False,
             random_weights: bool = False) -> Backbone:
    """A frozen backbone, cached per process (workers keep it between shards)."""
    return load_backbone(name, pretrained=not random_weights, weights=weights, use_norm=use_norm, tap=tap)


def upsampler(name: str, bb: Backbone, checkpoint: str | None = None, storage: dict | None = None,
              implicit_options: dict | None = None) -> Any:
    """The upsampling callable for ``name``: a trained module, or per-image implicit fitting."""
    return _upsampler(name, bb, checkpoint, json.dumps(storage or {}, sort_keys=True),
                      json.dumps(implicit_options or {}, sort_keys=True))


@functools.lru_cache(maxsize=8)
def _upsampler(name: str, bb: Backbone, checkpoint: str | None, storage: str, implicit_options: str) -> Any:
    if name == "implicit":
        return ImplicitPerImage(bb, **json.loads(implicit_options))
    module: nn.Module = load_upsampler(name, backbone=bb.id, checkpoint=checkpoint,
                                       storage_options=json.loads(storage) or None, dim=bb.dim)
    return module.eval()
