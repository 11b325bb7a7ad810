"""featup.eval.sharpness on known answers."""

import math

import pytest
import torch
import torch.nn.functional as F

from featup.eval.sharpness import (
    contrast_kept,
    edge_concentration,
    image_edges,
    label_boundaries,
    pooled_cosine,
)


def test_a_step_exactly_on_the_edges_scores_one_over_the_edge_fraction():
    labels = torch.zeros(1, 32, 32, dtype=torch.long)
    labels[..., 16:] = 1
    edges = label_boundaries(labels)
    assert edges.sum() == 2 * 32  # the two columns either side of the step
    step = labels[:, None].float().expand(1, 4, 32, 32)
    assert edge_concentration(step, edges).item() == pytest.approx(1 / edges.float().mean().item())


def test_blur_lowers_the_score_and_uniform_change_scores_one():
    labels = torch.zeros(1, 32, 32, dtype=torch.long)
    labels[..., 16:] = 1
    edges = label_boundaries(labels)
    step = labels[:, None].float()
    blurred = F.avg_pool2d(F.pad(step, [4, 4, 4, 4], mode="replicate"), 9, stride=1)
    assert 1 < edge_concentration(blurred, edges) < edge_concentration(step, edges)
    ramp = torch.linspace(0, 1, 32).expand(1, 1, 32, 32)
    assert edge_concentration(ramp, edges).item() == pytest.approx(1.0, abs=0.05)


def test_nothing_to_measure_is_nan():
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    assert math.isnan(edge_concentration(torch.randn(1, 2, 8, 8), label_boundaries(labels)).item())


def test_ignored_labels_make_no_boundary():
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[..., 4:] = 255
    assert not label_boundaries(labels, ignore_index=255).any()
    assert label_boundaries(labels).any()


def test_canny_finds_a_square():
    image = torch.zeros(1, 3, 40, 40)
    image[..., 10:30, 10:30] = 1
    edges = image_edges(image)
    assert edges[0, 10:30, 8:12].any() and not edges[0, 18:22, 18:22].any()


def test_pooled_cosine_is_one_for_a_lossless_upsampler_and_checks_shapes():
    low = torch.randn(2, 5, 4, 4)
    assert torch.allclose(pooled_cosine(low.repeat_interleave(8, -1).repeat_interleave(8, -2), low), torch.ones(2))
    with pytest.raises(ValueError, match="differ in batch or channels"):
        pooled_cosine(torch.randn(1, 4, 8, 8), low)
    with pytest.raises(ValueError, match="boolean edge map"):
        edge_concentration(low, torch.zeros(2, 4, 4))


def test_contrast_kept_is_one_for_a_lossless_upsampler_and_follows_each_channels_scale():
    low = torch.randn(2, 5, 4, 4, generator=torch.Generator().manual_seed(0))
    lossless = low.repeat_interleave(8, -1).repeat_interleave(8, -2)
    torch.testing.assert_close(contrast_kept(lossless, low), torch.ones(2))
    # cosine cannot see a uniform shrink; contrast can
    torch.testing.assert_close(contrast_kept(0.5 * lossless, low), torch.full((2,), 0.5))
    torch.testing.assert_close(pooled_cosine(0.5 * lossless, low), torch.ones(2))
    # a blur loses contrast; a constant shift does not
    blurred = F.interpolate(F.avg_pool2d(low, 2), size=(32, 32), mode="bilinear")
    assert (contrast_kept(blurred, low) < 0.9).all()
    torch.testing.assert_close(contrast_kept(lossless + 3.0, low), torch.ones(2))
    dead = low.clone()
    dead[:, 0] = 1.0  # a constant channel (the stride-32 head has some) neither counts nor divides by zero
    torch.testing.assert_close(contrast_kept(0.5 * dead.repeat_interleave(8, -1).repeat_interleave(8, -2), dead),
                               torch.full((2,), 0.5))
    with pytest.raises(ValueError, match="differ in batch or channels"):
        contrast_kept(torch.randn(1, 4, 8, 8), low)
