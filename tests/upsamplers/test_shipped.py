"""The JBU checkpoints featup ships for EfficientNet-Lite0: they load by name, sharpen real photos' features
where the photo has edges, and keep their meaning."""

import pytest
import torch
import torch.nn.functional as F

from featup.backbones import load_backbone
from featup.eval.features import image_tensor
from featup.eval.sharpness import edge_concentration, image_edges, pooled_cosine
from featup.photos import sample_photos
from featup.upsamplers import JBUStack, create_upsampler, load_upsampler

PHOTOS = ["astronaut", "coffee", "motorcycle", "voc"]


# sharper: the least ratio of the JBU's edge concentration to bilinear's; kept: the least pooled cosine to the
# backbone's own features. Measured values are in docs/bench/jbu-training.md; these leave a margin.
@pytest.mark.parametrize(("tap", "channels", "sharper", "kept"), [(None, 112, 1.8, 0.95), ("stride32", 1280, 1.8, 0.95)])
def test_shipped_jbu_loads_by_name_follows_edges_and_keeps_meaning(tap, channels, sharper, kept):
    backbone = load_backbone("efficientnet_lite0", tap=tap)
    jbu = load_upsampler("jbu", backbone=backbone.id)
    assert isinstance(jbu, JBUStack) and jbu.dim == channels and not jbu.training
    photos = sample_photos(PHOTOS)
    images = torch.cat([image_tensor(photos[name], 224) for name in PHOTOS])
    with torch.no_grad():
        low = backbone(backbone.normalize(images))
        sharp = torch.cat([jbu(low[i:i + 1], images[i:i + 1]) for i in range(len(PHOTOS))])
        classical = create_upsampler("bilateral")
        untrained = torch.cat([classical(low[i:i + 1], images[i:i + 1]) for i in range(len(PHOTOS))])
    blurred = F.interpolate(low, size=(224, 224), mode="bilinear", align_corners=False)
    assert sharp.shape == (len(PHOTOS), channels, 224, 224)
    edges = image_edges(images)
    # Sharpening, measured: the features change on the photo's edges far more than bilinear's do.
    assert edge_concentration(sharp, edges).mean() > sharper * edge_concentration(blurred, edges).mean()
    # Meaning kept: pooled back onto the backbone's grid, the JBU's features are the backbone's own.
    assert pooled_cosine(sharp, low).mean() > kept
    # What learning adds: sharper than the untrained classical filter AND more faithful, at once.
    assert edge_concentration(sharp, edges).mean() > edge_concentration(untrained, edges).mean()
    assert pooled_cosine(sharp, low).mean() > pooled_cosine(untrained, low).mean()
