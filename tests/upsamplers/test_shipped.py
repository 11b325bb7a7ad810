"""The JBU checkpoints featup ships for EfficientNet-Lite0: they load by name and sharpen real photos' features."""

import pytest
import torch

from featup.backbones import load_backbone
from featup.eval import edge_alignment
from featup.eval.features import image_tensor
from featup.photos import sample_photos
from featup.upsamplers import JBUStack, load_upsampler

PHOTOS = ["astronaut", "coffee", "motorcycle", "voc"]


# kept: the least cosine between the JBU features pooled back to the grid and the backbone's own. The
# stride-32 head's 1280×1280 fixup, trained for 200 steps, moves its features more (see docs/bench/core.md).
@pytest.mark.parametrize(("tap", "channels", "size", "kept"), [(None, 112, 224, 0.93), ("stride32", 1280, 112, 0.85)])
def test_shipped_jbu_loads_by_name_and_follows_edges_bilinear_blurs(tap, channels, size, kept):
    backbone = load_backbone("efficientnet_lite0", tap=tap)
    jbu = load_upsampler("jbu", backbone=backbone.id)
    assert isinstance(jbu, JBUStack) and jbu.dim == channels and not jbu.training
    photos = sample_photos(PHOTOS)
    images = torch.cat([image_tensor(photos[name], 224) for name in PHOTOS])
    with torch.no_grad():
        low = backbone(backbone.normalize(images))
        sharp = jbu(low, images, (size, size))
    blurred = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    guide = torch.nn.functional.interpolate(images, size=(size, size), mode="area")
    assert sharp.shape == (len(PHOTOS), channels, size, size)
    # Sharpening, measured: the upsampled features change where the photo does, far more than bilinear's.
    assert edge_alignment(sharp, guide) > edge_alignment(blurred, guide) + 0.15
    # Meaning kept: pooled back onto the backbone's grid, the JBU's features are the backbone's own.
    pooled = torch.nn.functional.adaptive_avg_pool2d(sharp, low.shape[-2:])
    assert torch.nn.functional.cosine_similarity(pooled, low, dim=1).mean() > kept
