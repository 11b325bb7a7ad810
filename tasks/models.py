"""Backbones and upsamplers loaded once per worker process and reused by every task that runs there.

Creating a store loads the models named by the flow's parameters; a shard task rebuilds them from the
store's spec. Both go through the same cache, so a run that creates the store and computes its shards in
one process loads each model once.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from featup.backbones import BACKBONES, Backbone, load_backbone
from featup.io import StorageRoot
from featup.pipeline import (
    ImplicitPerImage,
    PrecomputeOptions,
    backbone_name,
    check_models,
)
from featup.store import FeatureSpec
from featup.upsamplers import load_upsampler


def backbone(name: str, tap: str | None = None, weights: StorageRoot | None = None,
             random_weights: bool = False) -> Backbone:
    """A frozen backbone, cached per process (workers keep it between shards)."""
    if tap is None and name in BACKBONES:  # one cache entry whether the default tap is named or not
        tap = BACKBONES[name].default_tap
    return _backbone(name, tap, weights, random_weights)


@functools.lru_cache(maxsize=4)
def _backbone(name: str, tap: str | None, weights: StorageRoot | None, random_weights: bool) -> Backbone:
    return load_backbone(name, pretrained=not random_weights, tap=tap,
                         weights=None if weights is None else weights.url,
                         storage_options=None if weights is None else weights.options)


def upsampler(name: str, bb: Backbone, checkpoint: StorageRoot | None = None,
              upsampler_options: dict[str, Any] | None = None) -> Any:
    """The upsampling callable for ``name``, cached per process: a trained module, or per-image implicit fitting."""
    return _upsampler(name, bb, checkpoint, json.dumps(upsampler_options or {}, sort_keys=True))


@functools.lru_cache(maxsize=8)
def _upsampler(name: str, bb: Backbone, checkpoint: StorageRoot | None, upsampler_options: str) -> Any:
    if name == "implicit":
        return ImplicitPerImage(bb, **json.loads(upsampler_options))
    return load_upsampler(name, backbone=bb.id, dim=bb.dim, checkpoint=None if checkpoint is None else checkpoint.url,
                          storage_options=None if checkpoint is None else checkpoint.options).eval()


def for_spec(spec: FeatureSpec, options: PrecomputeOptions) -> tuple[Backbone, Any]:
    """The models a store's spec records, from this process's cache, checked against the spec's hashes."""
    bb = backbone(backbone_name(spec), spec.tap, options.weights, spec.weights == "random")
    up = upsampler(spec.upsampler, bb, options.checkpoint, spec.upsampler_options)
    check_models(spec, bb, up)
    return bb, up
