"""image_tensor and upsampled: the inputs every evaluation shares."""

import numpy as np
import pytest
import torch

from featup.eval.features import image_tensor, upsampled
from featup.upsamplers import load_upsampler


def test_image_tensor_accepts_arrays_and_tensors_and_resizes():
    array = np.zeros((20, 30, 3), np.uint8)
    array[..., 0] = 255
    array.flags.writeable = False  # as decoded and offline arrays may be
    x = image_tensor(array)
    assert x.shape == (1, 3, 20, 30) and x[0, 0].min() == 1 and x[0, 1].max() == 0
    assert torch.equal(image_tensor(x[0]), x)
    resized = image_tensor(array, 16)
    assert resized.shape == (1, 3, 16, 16) and resized.min() >= 0 and resized.max() <= 1
    with pytest.raises(ValueError, match="H×W×3"):
        image_tensor(np.zeros((4, 4), np.uint8))


def test_upsampled_runs_modules_without_autograd_and_keeps_function_gradients_inside():
    features = torch.randn(1, 5, 4, 4, requires_grad=True)
    image = torch.rand(1, 3, 32, 32)
    assert upsampled(features, image, None) is features
    out = upsampled(features, image, load_upsampler("bilinear"), (16, 16))
    assert out.shape == (1, 5, 16, 16) and not out.requires_grad
    seen = []

    def fits_first(f, img, size):
        seen.append(torch.is_grad_enabled())
        return torch.nn.functional.interpolate(f * 2, size=size)

    out = upsampled(features, image, fits_first)
    with torch.no_grad():  # as inside the probes' evaluation loops
        upsampled(features, image, fits_first)
    assert seen == [True, True] and out.shape == (1, 5, 32, 32) and not out.requires_grad


def test_an_upsampler_that_changes_channels_is_refused():
    with pytest.raises(ValueError, match="keep batch and channels"):
        upsampled(torch.randn(1, 5, 4, 4), torch.rand(1, 3, 8, 8), lambda f, i, s: f[:, :2])
