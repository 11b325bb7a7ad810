"""featup.upsamplers.bilateral: the untrained classical joint bilateral upsampler."""

import pytest
import torch
import torch.nn.functional as F

from featup.eval.sharpness import edge_concentration, label_boundaries, pooled_cosine
from featup.upsamplers import JointBilateral, load_upsampler


def step_scene():
    """A 64×64 image split into two colours along a vertical line at x = 36 (not on the 8-px grid), and
    features that know only which side each 8×8 cell mostly lies on."""
    labels = torch.zeros(1, 64, 64, dtype=torch.long)
    labels[..., 36:] = 1
    image = torch.stack([labels.float() * 0.8 + 0.1] * 3, 1)
    low = F.avg_pool2d(torch.cat([1 - labels[:, None].float(), labels[:, None].float()], 1), 8)
    return image, low, labels


def test_follows_the_image_edge_that_bilinear_blurs():
    image, low, labels = step_scene()
    boundary = label_boundaries(labels)
    sharp = JointBilateral()(low, image)
    blurred = F.interpolate(low, size=(64, 64), mode="bilinear", align_corners=False)
    assert edge_concentration(sharp, boundary) > 2 * edge_concentration(blurred, boundary)
    assert pooled_cosine(sharp, low) > 0.95


def test_needs_no_checkpoint_and_reaches_any_size():
    up = load_upsampler("bilateral")
    image, low, _ = step_scene()
    assert up(low, image, (48, 80)).shape == (1, 2, 48, 80)


def test_bad_sigmas_rejected():
    with pytest.raises(ValueError, match="positive sigmas"):
        JointBilateral(colour_sigma=0)
