"""Checkpoints: save and load module weights with metadata over fsspec, and import published FeatUp JBU checkpoints.

A featup checkpoint is one ``torch.save`` file holding ``{"format", "version", "featup_version",
"sha256", "metadata", "state_dict"}``; it loads with ``torch.load(weights_only=True)`` (no code runs on
load), so metadata is restricted to None, bool, int, float, str and lists / tuples / str-keyed dicts of
them. ``sha256`` is :func:`checkpoint_hash` of the state dict, checked on every load. Paths may be
local or any fsspec URL (``s3://``, ``memory://``, ...).
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import posixpath
import re
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import fsspec
import torch
from fsspec.implementations.local import LocalFileSystem
from torch import nn

import featup
from featup.backbones import ChannelNorm

if TYPE_CHECKING:
    from featup.upsamplers.jbu import JBUStack

__all__ = [
    "FORMAT",
    "OfficialJBU",
    "checkpoint_hash",
    "load_checkpoint",
    "load_official_jbu",
    "save_checkpoint",
]

FORMAT = "featup.checkpoint"
_VERSION = 1


class OfficialJBU(NamedTuple):
    """A published FeatUp JBU checkpoint in featup terms: the upsampler and, if trained with one, the channel norm.

    ``channel_norm`` is the LayerNorm the published models apply to the backbone's features before
    upsampling (``model.1.norm``); apply it to the features you pass to ``upsampler``.
    """

    upsampler: JBUStack
    channel_norm: ChannelNorm | None


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
    fs, path = fsspec.core.url_to_fs(os.fspath(path_or_url), **(storage_options or {}))
    parent = posixpath.dirname(path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    if isinstance(fs, LocalFileSystem):
        # Write beside, then rename: a crash mid-write never leaves a truncated checkpoint behind.
        partial = f"{path}.{uuid.uuid4().hex}.partial"
        fs.pipe_file(partial, buffer.getvalue())
        os.replace(partial, path)
    else:
        fs.pipe_file(path, buffer.getvalue())
    return digest


def load_checkpoint(
    path_or_url: str | os.PathLike, *, storage_options: Mapping[str, Any] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read ``(state_dict, metadata)`` from a featup checkpoint (or a bare state dict) at a path or fsspec URL."""
    source = os.fspath(path_or_url)
    payload = _read(source, storage_options)
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
        return state_dict, dict(payload["metadata"])
    if isinstance(payload, Mapping) and payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        return dict(payload), {}
    inner = payload.get("state_dict") if isinstance(payload, Mapping) else None
    if isinstance(inner, Mapping) and any(str(key).startswith("upsampler.up1.") for key in inner):
        raise ValueError(
            f"{source} is a published FeatUp checkpoint; import it with featup.checkpoints.load_official_jbu"
        )
    raise ValueError(f"{source} is not a featup checkpoint (from save_checkpoint) nor a state dict of tensors")


def load_official_jbu(
    checkpoint: str | os.PathLike | Mapping[str, Any], *, storage_options: Mapping[str, Any] | None = None
) -> OfficialJBU:
    """Load a published FeatUp JBU Lightning checkpoint (path, URL or loaded dict) strictly into a ``JBUStack``.

    Keys under ``upsampler.`` must match exactly (missing or unexpected ones are an error naming them);
    ``downsampler.*`` and ``scale_net.*`` (training only) and the backbone's own weights are ignored.
    """
    # Imported here: featup.upsamplers imports this module to load checkpoints.
    from featup.upsamplers.jbu import JBUStack

    source = "the given checkpoint" if isinstance(checkpoint, Mapping) else os.fspath(checkpoint)
    raw = checkpoint if isinstance(checkpoint, Mapping) else _read(source, storage_options)
    if not isinstance(raw, Mapping):
        raise ValueError(f"got {type(raw).__name__} from {source}, expected a FeatUp Lightning checkpoint (a dict)")
    state = raw["state_dict"] if isinstance(raw.get("state_dict"), Mapping) else raw
    upsampler_state = {k[len("upsampler.") :]: v for k, v in state.items() if k.startswith("upsampler.")}
    if "fixup_proj.1.weight" not in upsampler_state:
        raise ValueError(
            f"{source} has no upsampler.fixup_proj.1.weight, so it is not a FeatUp JBU checkpoint (expected a "
            "Lightning checkpoint whose state_dict holds upsampler.up1..up4 and upsampler.fixup_proj)"
        )
    dim = upsampler_state["fixup_proj.1.weight"].shape[0]
    layer_numbers = {int(m.group(1)) for key in upsampler_state if (m := re.match(r"up(\d+)\.", key))}
    options = {}
    if "up1.range_proj.0.weight" in upsampler_state and "up1.fixup_proj.0.weight" in upsampler_state:
        taps = upsampler_state["up1.fixup_proj.0.weight"].shape[0]
        key_dim = upsampler_state["up1.range_proj.0.weight"].shape[0]
        options = {"key_dim": key_dim, "radius": (round(taps**0.5) - 1) // 2}
    upsampler = JBUStack(dim, max(layer_numbers, default=4), **options)

    expected = set(upsampler.state_dict())
    missing = sorted(expected - set(upsampler_state))
    unexpected = sorted(set(upsampler_state) - expected)
    if missing or unexpected:
        raise ValueError(
            f"{source} does not match FeatUp's JBU stack (dim {dim}): "
            f"missing {['upsampler.' + k for k in missing]}, unexpected {['upsampler.' + k for k in unexpected]}"
        )
    _load_strict(upsampler, upsampler_state, source)

    norm_state = {k[len("model.1.norm.") :]: v for k, v in state.items() if k.startswith("model.1.norm.")}
    channel_norm = None
    if norm_state:
        channel_norm = ChannelNorm(norm_state["weight"].shape[0] if "weight" in norm_state else dim)
        _load_strict(channel_norm.norm, norm_state, source)
        channel_norm.eval()
    return OfficialJBU(upsampler.eval(), channel_norm)


def _load_strict(module: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    try:
        module.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        raise ValueError(f"{source} does not fit {type(module).__name__}: {error}") from error


def _read(source: str, storage_options: Mapping[str, Any] | None) -> Any:
    try:
        with fsspec.open(source, "rb", **(storage_options or {})) as file:
            data = file.read()
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
