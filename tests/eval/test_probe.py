"""LinearProbe and the helpers that feed it."""

import pytest
import torch

from featup.eval.probe import LinearProbe, resize_map, sample_pixels, standardization


def test_linear_probe_standardises_with_training_statistics():
    pixels = torch.tensor([[1.0, 5.0], [3.0, 5.0]])
    mean, std = standardization(pixels)
    assert mean.tolist() == [2.0, 5.0] and std.tolist() == [1.0, 1.0]  # the constant channel gets std 1
    probe = LinearProbe(mean, std, 1)
    with torch.no_grad():
        probe.conv.weight.copy_(torch.tensor([[[[2.0]], [[7.0]]]]))
        probe.conv.bias.fill_(0.5)
    maps = pixels.T.reshape(1, 2, 1, 2)
    assert probe(maps).flatten().tolist() == [-1.5, 2.5]
    assert probe.linear(pixels).flatten().tolist() == [-1.5, 2.5]


def test_sample_pixels_draws_valid_pixels_reproducibly():
    features = torch.arange(2 * 3 * 4.0).reshape(2, 3, 4)
    valid = torch.zeros(3, 4, dtype=torch.bool)
    valid[1] = True
    x, index = sample_pixels(features, valid, 2, torch.Generator().manual_seed(0))
    assert set(index.tolist()) <= {4, 5, 6, 7} and len(index) == 2
    assert torch.equal(x[:, 0], index.float())
    again, _ = sample_pixels(features, valid, 2, torch.Generator().manual_seed(0))
    assert torch.equal(x, again)
    everything, _ = sample_pixels(features, valid, 100, torch.Generator().manual_seed(0))
    assert everything.shape == (4, 2)


def test_resize_map_modes():
    values = torch.tensor([[[[0.0, 1.0]]]])
    assert resize_map(values, (1, 4), "nearest").flatten().tolist() == [0, 0, 1, 1]
    assert resize_map(values, (1, 4), "bilinear").flatten().tolist() == [0, 0.25, 0.75, 1]
    assert resize_map(values, (1, 2), "bicubic") is values  # same size: untouched
    with pytest.raises(ValueError, match="'nearest' or 'bilinear'"):
        resize_map(values, (2, 2), "bicubic")
