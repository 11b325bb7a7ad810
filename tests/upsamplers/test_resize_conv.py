"""featup.upsamplers.resize_conv: bilinear resize plus a learned convolution residual."""

import pytest
import torch
import torch.nn.functional as F

from featup.upsamplers import ResizeConv


def test_untrained_is_bilinear():
    features = torch.randn(2, 6, 7, 9, generator=torch.Generator().manual_seed(0))
    out = ResizeConv(6)(features, torch.rand(2, 3, 28, 36))
    torch.testing.assert_close(out, F.interpolate(features, (28, 36), mode="bilinear", align_corners=False))


def test_learns_a_correction():
    generator = torch.Generator().manual_seed(0)
    features, image = torch.randn(1, 6, 7, 7, generator=generator), torch.rand(1, 3, 28, 28, generator=generator)
    target = torch.randn(1, 6, 28, 28, generator=generator)
    model = ResizeConv(6)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    for _ in range(5):
        loss = (model(features, image) - target).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_wrong_channels_rejected():
    with pytest.raises(ValueError, match="got features with 5 channels, expected 6"):
        ResizeConv(6)(torch.randn(1, 5, 7, 7), torch.rand(1, 3, 28, 28))


def test_even_kernel_rejected():
    with pytest.raises(ValueError, match="got kernel_size=2, expected a positive odd size"):
        ResizeConv(6, kernel_size=2)
