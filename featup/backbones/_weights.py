"""Backbone weights: find them (never downloading), read them, load them strictly, and name them portably.

A store records which weights made its features by a portable name (a file's base name, a package and
its version) and the sha256 of the loaded state dict, never by the writer host's path.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from featup.io import read_bytes

if TYPE_CHECKING:
    from featup.backbones._registry import BackboneSpec

WEIGHT_SUFFIXES = (".pth", ".pt", ".safetensors", ".bin")


class MissingWeightsError(FileNotFoundError):
    """Real weights were asked for but none can be found locally."""


def resolve_weights(spec: BackboneSpec, weights: str | os.PathLike | Mapping[str, torch.Tensor] | None,
                    storage_options: Mapping | None) -> tuple[Mapping[str, torch.Tensor], str]:
    """Real weights for a backbone and their portable name, or MissingWeightsError saying how to provide them."""
    if isinstance(weights, Mapping):
        return weights, "state_dict"
    if weights is not None:
        return read_state_dict(weights, storage_options), portable_name(weights)
    weights_dir = os.environ.get("FEATUP_WEIGHTS_DIR")
    if weights_dir:
        for suffix in WEIGHT_SUFFIXES:
            candidate = Path(weights_dir) / f"{spec.name}{suffix}"
            if candidate.is_file():
                return read_state_dict(candidate), candidate.name
    if spec.packaged_weights is not None:
        return spec.packaged_weights()
    raise MissingWeightsError(
        f"no weights for backbone {spec.name!r} (nothing is downloaded at run time). Provide "
        f"{spec.weights_hint or 'its weights'}: pass weights='/path/or/s3://url', or put the file at "
        f"$FEATUP_WEIGHTS_DIR/{spec.name}.pth; or pass pretrained=False for random weights."
    )


def portable_name(source: str | os.PathLike) -> str:
    """What names a weights file on any host: its base name (the folder is the writer host's business)."""
    return os.fspath(source).rstrip("/").rsplit("/", 1)[-1]


def read_state_dict(source: str | os.PathLike, storage_options: Mapping | None = None) -> dict:
    """Read a state dict from a local path or fsspec URL (.safetensors or a torch file), unwrapping containers."""
    source = os.fspath(source)
    try:
        data = read_bytes(source, storage_options)
    except FileNotFoundError as e:
        raise MissingWeightsError(f"weights file not found: {source}; check the path or URL") from e
    if source.endswith(".safetensors"):
        from safetensors.torch import load

        state = load(data)
    else:
        try:
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"could not read weights from {source}: {e}. Expected a torch state dict "
                             "(.pth/.pt) or a .safetensors file") from e
    for key in ("state_dict", "model", "teacher", "module"):
        if isinstance(state, Mapping) and key in state and isinstance(state[key], Mapping):
            state = state[key]
    return {_strip_prefix(k): v for k, v in state.items()}


def _strip_prefix(key: str) -> str:
    for prefix in ("module.", "backbone.", "_orig_mod."):
        key = key.removeprefix(prefix)
    return key


def load_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], name: str) -> None:
    """Load strictly, after timm's own converter for the family (CLIP, DINOv2 layouts, position resampling)."""
    import sys

    convert = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    state = dict(state_dict)
    if convert is not None:
        state = convert(state, model)
    own = model.state_dict()
    # A classifier the model was built without (ViTs use num_classes=0) is not ours to load.
    for key in [k for k in state if k.startswith(("head.", "fc_norm.")) and k not in own]:
        del state[key]
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"weights do not fit backbone {name!r}: missing keys {missing[:8]}"
                         f"{'…' if len(missing) > 8 else ''}, unexpected keys {unexpected[:8]}"
                         f"{'…' if len(unexpected) > 8 else ''}. Are these weights for this architecture?")
    mismatched = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
    if mismatched:
        raise ValueError(f"weights do not fit backbone {name!r}: shape mismatch for {mismatched[:8]}")
    model.load_state_dict(state, strict=True)
