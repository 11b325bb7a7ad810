"""featup.upsamplers.bilinear: plain bilinear upsampling and the shared input checks."""

import pytest
import torch
import torch.nn.functional as F

from featup.upsamplers import Bilinear


def test_matches_interpolate_at_image_size():
    features = torch.randn(2, 5, 7, 9, generator=torch.Generator().manual_seed(0))
    image = torch.rand(2, 3, 56, 72)
    out = Bilinear()(features, image)
    torch.testing.assert_close(out, F.interpolate(features, (56, 72), mode="bilinear", align_corners=False))


def test_output_size_int_or_pair():
    features, image = torch.randn(1, 4, 7, 7), torch.rand(1, 3, 28, 28)
    assert Bilinear()(features, image, 40).shape == (1, 4, 40, 40)
    assert Bilinear()(features, image, (30, 50)).shape == (1, 4, 30, 50)


@pytest.mark.parametrize(
    ("features", "image", "message"),
    [
        (torch.randn(4, 7, 7), torch.rand(1, 3, 28, 28), "expected B×C×h×w"),
        (torch.randn(1, 4, 7, 7), torch.rand(1, 1, 28, 28), "expected a B×3×H×W RGB image"),
        (torch.randn(2, 4, 7, 7), torch.rand(1, 3, 28, 28), "expected one image per feature map"),
        (torch.randn(1, 4, 7, 7), torch.zeros(1, 3, 28, 28, dtype=torch.uint8), r"image.float\(\) / 255"),
    ],
)
def test_bad_inputs_rejected(features, image, message):
    with pytest.raises(ValueError, match=message):
        Bilinear()(features, image)


@pytest.mark.parametrize("output_size", [0, (10,), (10, 0), (10, 20, 30), (10.5, 20)])
def test_bad_output_size_rejected(output_size):
    with pytest.raises(ValueError, match="expected a positive int or a pair"):
        Bilinear()(torch.randn(1, 4, 7, 7), torch.rand(1, 3, 28, 28), output_size)
