"""Import published FeatUp JBU checkpoints (Lightning ``.ckpt`` files) into featup's ``JBUStack``.

Beside the JBU it loads into; featup's own checkpoint format is in ``featup.checkpoints``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from torch import nn

from featup.backbones import ChannelNorm
from featup.checkpoints import read_torch_file
from featup.upsamplers.jbu import JBUStack

__all__ = ["OfficialJBU", "load_official_jbu"]


class OfficialJBU(NamedTuple):
    """A published FeatUp JBU checkpoint in featup terms: the upsampler and, if trained with one, the channel norm.

    ``channel_norm`` is the LayerNorm the published models apply to the backbone's features before
    upsampling (``model.1.norm``); apply it to the features you pass to ``upsampler``.
    """

    upsampler: JBUStack
    channel_norm: ChannelNorm | None


def load_official_jbu(
    checkpoint: str | os.PathLike | Mapping[str, Any], *, storage_options: Mapping[str, Any] | None = None
) -> OfficialJBU:
    """Load a published FeatUp JBU Lightning checkpoint (path, URL or loaded dict) strictly into a ``JBUStack``.

    Keys under ``upsampler.`` must match exactly (missing or unexpected ones are an error naming them);
    ``downsampler.*`` and ``scale_net.*`` (training only) and the backbone's own weights are ignored.
    """
    source = "the given checkpoint" if isinstance(checkpoint, Mapping) else os.fspath(checkpoint)
    raw = checkpoint if isinstance(checkpoint, Mapping) else read_torch_file(source, storage_options)
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
