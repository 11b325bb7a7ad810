"""The upsampler registry: ``@register_upsampler`` entry points, ``create_upsampler`` and ``load_upsampler``.

An entry point is a function named for the upsampler that takes ``dim`` (the feature channels; no
default where the upsampler has weights shaped by it) plus keyword options and returns an
``nn.Module`` with ``forward(features, image, output_size=None)``. ``create_upsampler`` records what
built the module in ``module.upsampler_cfg`` ({"upsampler", "dim", "upsampler_kwargs"}), which
``featup.checkpoints.save_checkpoint`` stores as metadata, so ``load_upsampler`` can rebuild it. A
loaded upsampler also records where its weights came from: ``upsampler_cfg["checkpoint_sha256"]``, the
sha256 of the checkpoint's weights as read (the shipped default included).
"""

from __future__ import annotations

import importlib.resources
import inspect
import os
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from featup._registry import Registry
from featup.backbones import MissingWeightsError
from featup.checkpoints import checkpoint_hash, read_checkpoint

__all__ = ["UPSAMPLERS", "create_upsampler", "list_upsamplers", "load_upsampler", "register_upsampler",
           "shipped_checkpoint"]

UPSAMPLERS: Registry[Callable[..., nn.Module]] = Registry("upsampler")


def register_upsampler(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register an upsampler entry point under its function name (decorator)."""
    return UPSAMPLERS.register(fn.__name__, fn, f"{fn.__module__}.{fn.__qualname__}")


def list_upsamplers() -> list[str]:
    """Names of every registered upsampler, sorted."""
    return UPSAMPLERS.names()


def create_upsampler(name: str, dim: int | None = None, **kwargs: Any) -> nn.Module:
    """Build an untrained upsampler by name; ``dim`` is the feature channels of the backbone it serves."""
    entry = UPSAMPLERS[name]
    if _needs_dim(entry) and dim is None:
        raise ValueError(f"upsampler {name!r} has weights shaped by the features: pass dim=<feature channels>")
    module = entry(dim=dim, **kwargs)
    module.upsampler_cfg = {"upsampler": name, "dim": dim, "upsampler_kwargs": dict(kwargs)}
    return module


def shipped_checkpoint(name: str, backbone: str) -> str:
    """Path of the checkpoint featup ships for upsampler ``name`` trained on ``backbone``, which may not exist."""
    return os.fspath(importlib.resources.files("featup") / "checkpoints" / f"{name}_{backbone}.pt")


def load_upsampler(
    name: str,
    backbone: str | None = None,
    checkpoint: str | os.PathLike | Mapping[str, torch.Tensor] | None = None,
    *,
    storage_options: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a trained upsampler in eval mode from ``checkpoint`` or, given ``backbone``, the one featup ships.

    ``checkpoint`` is a path, an fsspec URL (reached with ``storage_options``) or a state dict; weights
    load strictly. Other keyword options override those recorded in the checkpoint's metadata.
    """
    entry = UPSAMPLERS[name]
    if checkpoint is None:
        shipped = shipped_checkpoint(name, backbone) if backbone is not None else None
        if shipped is not None and os.path.exists(shipped):
            checkpoint = shipped
        else:
            if not (_needs_dim(entry) and kwargs.get("dim") is None):
                module = create_upsampler(name, **kwargs)
                if not module.state_dict():
                    return module.eval()  # nothing to load: a parameter-free upsampler is always "trained"
            if shipped is not None:
                raise MissingWeightsError(
                    f"featup ships no {name!r} upsampler for backbone {backbone!r} (looked for {shipped}; "
                    f"shipped: {_shipped_names() or 'none'}). Train one (for 'jbu': featup.training.train_jbu("
                    f"..., checkpoint=PATH)) and pass checkpoint=<path or URL>, or save it there as "
                    f"{name}_{backbone}.pt."
                )
            raise ValueError(
                f"upsampler {name!r} has learned weights: pass checkpoint=<path, URL or state dict> or backbone=<name>"
            )

    if isinstance(checkpoint, Mapping):
        state_dict, metadata, sha256 = dict(checkpoint), {}, checkpoint_hash(checkpoint)
        source = "the given state dict"
    else:
        state_dict, metadata, sha256 = read_checkpoint(checkpoint, storage_options=storage_options)
        source = os.fspath(checkpoint)
    _check_metadata(name, backbone, metadata, source)
    options = {**metadata.get("upsampler_kwargs", {}), **kwargs}
    dim = options.pop("dim", None) or metadata.get("dim")
    module = create_upsampler(name, dim=dim, **options)
    try:
        module.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        raise ValueError(f"{source} does not fit upsampler {name!r} with dim={dim}: {error}") from error
    if metadata.get("backbone") is not None:
        module.upsampler_cfg["backbone"] = metadata["backbone"]
    module.upsampler_cfg["checkpoint_sha256"] = sha256
    return module.eval()


def _check_metadata(name: str, backbone: str | None, metadata: Mapping[str, Any], source: str) -> None:
    trained_as = metadata.get("upsampler")
    if trained_as is not None and trained_as != name:
        raise ValueError(f"{source} holds a {trained_as!r} upsampler, not {name!r}; load it with name={trained_as!r}")
    trained_on = metadata.get("backbone")
    if backbone is not None and trained_on is not None and trained_on != backbone:
        raise ValueError(
            f"{source} was trained on backbone {trained_on!r}, not {backbone!r}; its features would not match"
        )


def _needs_dim(entry: Callable[..., nn.Module]) -> bool:
    return inspect.signature(entry).parameters["dim"].default is inspect.Parameter.empty


def _shipped_names() -> str:
    folder = importlib.resources.files("featup") / "checkpoints"
    if not folder.is_dir():
        return ""
    return ", ".join(sorted(entry.name for entry in folder.iterdir() if entry.name.endswith(".pt")))
