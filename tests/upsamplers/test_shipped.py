"""The JBU checkpoints featup ships for EfficientNet-Lite0: they load by name, sharpen real photos' features
where the photo has edges, and keep their meaning."""

import pytest
import torch

from featup.backbones import load_backbone
from featup.eval.features import image_tensor
from featup.eval.sharpness import (
    contrast_kept,
    edge_concentration,
    image_edges,
    pooled_cosine,
)
from featup.photos import sample_photos
from featup.upsamplers import JBUStack, create_upsampler, load_upsampler


def _scores(upsampler, low: torch.Tensor, images: torch.Tensor, edges: torch.Tensor) -> tuple[float, float, float]:
    """Mean edge concentration, pooled cosine and contrast kept; one photo at a time (1280 channels at 224²)."""
    rows = []
    for i in range(len(images)):
        with torch.no_grad():
            high = upsampler(low[i:i + 1], images[i:i + 1])
        rows.append([edge_concentration(high, edges[i:i + 1]), pooled_cosine(high, low[i:i + 1]),
                     contrast_kept(high, low[i:i + 1])])
    return tuple(torch.tensor(column).mean().item() for column in zip(*rows))


# sharper: the least ratio of the JBU's edge concentration to bilinear's; kept: the least pooled cosine to the
# backbone's own features. Measured on all the packaged photos (docs/bench/jbu-training.md); these leave a margin.
@pytest.mark.parametrize(("tap", "channels", "sharper", "kept"), [(None, 112, 2.5, 0.95), ("stride32", 1280, 2.5, 0.95)])
def test_shipped_jbu_loads_by_name_follows_edges_and_keeps_meaning(tap, channels, sharper, kept):
    backbone = load_backbone("efficientnet_lite0", tap=tap)
    jbu = load_upsampler("jbu", backbone=backbone.id)
    assert isinstance(jbu, JBUStack) and jbu.dim == channels and not jbu.training
    images = torch.cat([image_tensor(photo, 224) for photo in sample_photos().values()])
    with torch.no_grad():
        low = backbone(backbone.normalize(images))
        assert jbu(low[:1], images[:1]).shape == (1, channels, 224, 224)
    edges = image_edges(images)
    concentration, cosine, contrast = _scores(jbu, low, images, edges)
    blurred, _, _ = _scores(create_upsampler("bilinear"), low, images, edges)
    classical = _scores(create_upsampler("bilateral"), low, images, edges)
    # Sharpening, measured: the features change on the photo's edges far more than bilinear's do.
    assert concentration > sharper * blurred
    # Meaning kept: pooled back onto the backbone's grid, the JBU's features are the backbone's own.
    assert cosine > kept
    # What learning adds: sharper than the untrained classical filter AND more faithful, at once.
    assert concentration > classical[0] and cosine > classical[1]
    # Contrast kept, so a probe trained on the backbone's features reads them (the transfer table): within 15 %
    # of the classical filter's. A JBU trained with the CRF term alone kept 71 % of it and lost segmentation.
    assert contrast > 0.85 * classical[2]
