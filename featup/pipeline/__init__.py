"""Shards → backbone → upsampler → feature store: the library side of the precompute pipeline.

``shard`` runs one shard from its tar to committed zarr chunks (``precompute_shard``); ``models`` makes the
store's spec the models' recipe (``feature_spec``, ``build_models``, ``check_models``); ``_compute`` runs the
models on a batch (``featurize``).
"""

from featup.pipeline._compute import StageTimes, cpu_threads, featurize, pick_device
from featup.pipeline.models import (
    ImplicitPerImage,
    backbone_name,
    build_models,
    check_models,
    feature_spec,
)
from featup.pipeline.shard import PrecomputeOptions, ShardReport, precompute_shard

__all__ = [
    "ImplicitPerImage",
    "PrecomputeOptions",
    "ShardReport",
    "StageTimes",
    "backbone_name",
    "build_models",
    "check_models",
    "cpu_threads",
    "feature_spec",
    "featurize",
    "pick_device",
    "precompute_shard",
]
