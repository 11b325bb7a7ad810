"""The store's spec as the models' recipe: write it from the models, rebuild them from it, check them against it.

A store records what made its features (backbone id and tap, the weights' portable name and sha256,
the upsampler and its checkpoint's sha256, per-image fit options); a worker on any host rebuilds the
models from that and refuses to write with different weights.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from featup.backbones import Backbone, load_backbone
from featup.io import StorageRoot
from featup.store import FeatureSpec

__all__ = ["ImplicitPerImage", "backbone_name", "build_models", "check_models", "feature_spec"]


class ImplicitPerImage:
    """Upsampling by fitting an implicit model to each image of a batch, all fitted at once.

    The implicit upsampler is per image: ``fit_implicit_batch`` fits one MLP per image as batched matrix
    products, so a batch of B images costs far less than B separate fits. ``fit_options`` go to it
    (``recipe``, ``steps``, ``seed``, …).
    """

    def __init__(self, backbone: nn.Module, **fit_options: Any):
        self.backbone = backbone
        self.fit_options = {"progress": False, **fit_options}

    def __call__(self, features: torch.Tensor, images: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
        from featup.training import fit_implicit_batch

        with torch.enable_grad():
            models = fit_implicit_batch(images, self.backbone, **self.fit_options)
        return torch.cat([model.to(images.device)(feats[None], image[None], output_size)
                          for model, feats, image in zip(models, features, images, strict=True)])


def feature_spec(
    dataset: str,
    backbone: Backbone,
    upsampler_name: str,
    upsampler: Any,
    *,
    size: tuple[int, int],
    dtype: str = "float16",
    keep_lowres: bool = True,
    upsampler_options: dict[str, Any] | None = None,
) -> FeatureSpec:
    """The spec of a store made by these models: the recipe :func:`build_models` rebuilds them from, with
    the weights' provenance (portable name and sha256 of the backbone's, sha256 of the upsampler's)."""
    h, w = size
    built = getattr(upsampler, "upsampler_cfg", {})
    extra: dict[str, Any] = {"image_size": [h, w]}
    if kwargs := built.get("upsampler_kwargs"):
        # What the module was built with beyond its weights (e.g. a JBU's back_projection, recorded in its
        # checkpoint): the same weights built otherwise give other features.
        extra["upsampler_kwargs"] = dict(kwargs)
    return FeatureSpec(
        dataset=dataset, backbone=backbone.id, upsampler=upsampler_name, channels=backbone.dim, size=(h, w),
        dtype=dtype, lowres_size=(h // backbone.stride, w // backbone.stride) if keep_lowres else None,
        tap=backbone.tap, normalization=backbone.norm_config,
        checkpoint_sha256=built.get("checkpoint_sha256"),
        weights=backbone.weights, weights_sha256=backbone.weights_sha256,
        upsampler_options=dict(upsampler_options or {}), extra=extra,
    )


def backbone_name(spec: FeatureSpec) -> str:
    """The registered (or timm) name of the spec's backbone: its id without the ``-<tap>`` of a non-default tap."""
    return spec.backbone.removesuffix(f"-{spec.tap}")


def check_models(spec: FeatureSpec, backbone: Backbone, upsampler: Any) -> None:
    """Refuse models whose weights are not the ones the store records: its features would mix two models."""
    if spec.weights is None:
        raise ValueError(f"the store of {spec.dataset}/{spec.backbone}/{spec.upsampler} records no weights "
                         "(made before featup recorded them): create a new store to compute more of it")
    if (backbone.id, backbone.weights_sha256) != (spec.backbone, spec.weights_sha256):
        raise ValueError(
            f"the backbone here ({backbone.id}, weights {backbone.weights}, sha256 {backbone.weights_sha256}) is not "
            f"the one the store was made with ({spec.backbone}, weights {spec.weights}, sha256 "
            f"{spec.weights_sha256}): pass the same weights file, or write to another store")
    sha = getattr(upsampler, "upsampler_cfg", {}).get("checkpoint_sha256")
    if sha != spec.checkpoint_sha256:
        raise ValueError(
            f"the {spec.upsampler} upsampler here has weights with sha256 {sha}, the store was made with "
            f"{spec.checkpoint_sha256}: pass the same checkpoint, or write to another store")
    built = getattr(upsampler, "upsampler_cfg", {}).get("upsampler_kwargs") or {}
    if "upsampler_kwargs" in spec.extra and dict(built) != spec.extra["upsampler_kwargs"]:
        raise ValueError(
            f"the {spec.upsampler} upsampler here is built with {dict(built)}, the store was made with "
            f"{spec.extra['upsampler_kwargs']}: build it with those options, or write to another store")


def build_models(spec: FeatureSpec, *, weights: StorageRoot | None = None,
                 checkpoint: StorageRoot | None = None) -> tuple[Backbone, Any]:
    """Backbone and upsampler rebuilt from a store's spec (weights found at ``weights`` / ``checkpoint`` or
    where featup looks by default), checked against the weights the store records."""
    from featup.upsamplers import load_upsampler

    backbone = load_backbone(backbone_name(spec), pretrained=spec.weights != "random",
                             weights=None if weights is None else weights.url, tap=spec.tap,
                             storage_options=None if weights is None else weights.options)
    if spec.upsampler == "implicit":
        upsampler: Any = ImplicitPerImage(backbone, **spec.upsampler_options)
    else:
        upsampler = load_upsampler(spec.upsampler, backbone=backbone.id, dim=backbone.dim,
                                   checkpoint=None if checkpoint is None else checkpoint.url,
                                   storage_options=None if checkpoint is None else checkpoint.options,
                                   **spec.extra.get("upsampler_kwargs", {}))
    check_models(spec, backbone, upsampler)
    return backbone, upsampler


