"""Checkpoints: save and load module weights with metadata over fsspec, with the sha256 that is their provenance.

A featup checkpoint is one ``torch.save`` file holding ``{"format", "version", "featup_version",
"sha256", "metadata", "state_dict"}``; it loads with ``torch.load(weights_only=True)`` (no code runs on
load), so metadata is restricted to None, bool, int, float, str and lists / tuples / str-keyed dicts of
them. ``sha256`` is :func:`checkpoint_hash` of the state dict, checked on every load. Paths may be
local or any fsspec URL (``s3://``, ``memory://``, ...). Published FeatUp JBU checkpoints are imported by
``featup.upsamplers.official``.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from torch import nn

import featup
from featup.io import read_bytes, write_bytes

__all__ = [
    "FORMAT",
    "Checkpoint",
    "checkpoint_hash",
    "load_checkpoint",
    "read_checkpoint",
    "read_torch_file",
    "save_checkpoint",
]

FORMAT = "featup.checkpoint"
_VERSION = 1


class Checkpoint(NamedTuple):
    """A checkpoint as read: its weights, its metadata, and the sha256 of the weights (:func:`checkpoint_hash`)."""

    state_dict: dict[str, torch.Tensor]
    metadata: dict[str, Any]
    sha256: str


def checkpoint_hash(state_dict: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of a state dict's tensors, in key order: stable provenance."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key]
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"got state_dict[{key!r}] of type {type(tensor).__name__}, expected a torch.Tensor")
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{key}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_checkpoint(
    path_or_url: str | os.PathLike,
    module: nn.Module,
    metadata: Mapping[str, Any] | None = None,
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """Write ``module``'s weights and metadata to a path or fsspec URL; returns the weights' sha256.

    The metadata a module carries (``upsampler_cfg``, set by ``featup.upsamplers.create_upsampler``) is
    saved too, under the keys of ``metadata``, so ``load_upsampler`` can rebuild the module.
    ``storage_options`` go to fsspec (e.g. ``{"endpoint_url": ...}`` for an S3-compatible store).
    """
    state_dict = {key: value.detach().to("cpu", copy=True) for key, value in module.state_dict().items()}
    merged = {**getattr(module, "upsampler_cfg", {}), **(metadata or {})}
    _check_plain(merged, "metadata")
    digest = checkpoint_hash(state_dict)
    payload = {
        "format": FORMAT,
        "version": _VERSION,
        "featup_version": featup.__version__,
        "sha256": digest,
        "metadata": merged,
        "state_dict": state_dict,
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    # atomic: a crash mid-write never leaves a truncated checkpoint behind
    write_bytes(os.fspath(path_or_url), buffer.getvalue(), storage_options)
    return digest


def read_checkpoint(
    path_or_url: str | os.PathLike, *, storage_options: Mapping[str, Any] | None = None
) -> Checkpoint:
    """Read a featup checkpoint (or a bare state dict) at a path or fsspec URL, once: weights, metadata, sha256.

    A featup checkpoint's stored hash is checked against its weights (a mismatch means corruption); a bare
    state dict is hashed as read.
    """
    source = os.fspath(path_or_url)
    payload = read_torch_file(source, storage_options)
    if isinstance(payload, Mapping) and payload.get("format") == FORMAT:
        if payload.get("version") != _VERSION:
            raise ValueError(
                f"got checkpoint format version {payload.get('version')} in {source}, expected {_VERSION}; "
                "upgrade featup to read it"
            )
        state_dict = dict(payload["state_dict"])
        actual = checkpoint_hash(state_dict)
        if actual != payload["sha256"]:
            raise ValueError(
                f"checkpoint {source} is corrupt: its weights hash to {actual}, expected {payload['sha256']}; "
                "save or download it again"
            )
        return Checkpoint(state_dict, dict(payload["metadata"]), actual)
    if isinstance(payload, Mapping) and payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        return Checkpoint(dict(payload), {}, checkpoint_hash(payload))
    inner = payload.get("state_dict") if isinstance(payload, Mapping) else None
    if isinstance(inner, Mapping) and any(str(key).startswith("upsampler.up1.") for key in inner):
        raise ValueError(
            f"{source} is a published FeatUp checkpoint; import it with featup.upsamplers.official.load_official_jbu"
        )
    raise ValueError(f"{source} is not a featup checkpoint (from save_checkpoint) nor a state dict of tensors")


def load_checkpoint(
    path_or_url: str | os.PathLike, *, storage_options: Mapping[str, Any] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read ``(state_dict, metadata)`` from a featup checkpoint (or a bare state dict) at a path or fsspec URL."""
    state_dict, metadata, _ = read_checkpoint(path_or_url, storage_options=storage_options)
    return state_dict, metadata


def read_torch_file(source: str, storage_options: Mapping[str, Any] | None = None) -> Any:
    """What ``torch.load(weights_only=True)`` reads from a path or fsspec URL (no code runs on load)."""
    try:
        data = read_bytes(source, storage_options)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"no checkpoint at {source}; check the path or URL") from error
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        raise ValueError(
            f"cannot read {source} with torch.load(weights_only=True): {error}. If it is a checkpoint you trust "
            "that holds other objects, load it yourself with torch.load(..., weights_only=False) and pass the dict"
        ) from error


def _check_plain(value: Any, where: str) -> None:
    if value is None or type(value) in (bool, int, float, str):
        return
    if type(value) in (list, tuple):
        for index, item in enumerate(value):
            _check_plain(item, f"{where}[{index}]")
        return
    if type(value) is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise TypeError(f"got key {key!r} in {where}, expected str keys")
            _check_plain(item, f"{where}[{key!r}]")
        return
    raise TypeError(
        f"got {where} of type {type(value).__name__}, expected None, bool, int, float, str or lists / dicts of "
        "them (what torch.load(weights_only=True) can read back); convert it, e.g. with float() or str()"
    )
