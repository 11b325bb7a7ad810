import pytest
import torch
import torch.nn.functional as F

from featup.jitter import Jitter, apply_jitter, sample_jitter


def reference_jitter(x: torch.Tensor, j: Jitter) -> torch.Tensor:
    """The published transform step by step: reflect pad, bilinear zoom, crop, flip."""
    h, w = x.shape[-2:]
    padded = F.pad(x, [j.pad] * 4, mode="reflect")
    if j.zoom > 1:
        size = (int(padded.shape[-2] * j.zoom), int(padded.shape[-1] * j.zoom))
        padded = F.interpolate(padded, size=size, mode="bilinear", align_corners=False)
    cropped = padded[:, :, j.top:j.top + h, j.left:j.left + w]
    return cropped.flip(3) if j.flip else cropped


def test_matches_pad_zoom_crop_flip_for_many_draws():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 24, 40, dtype=torch.float64)
    for _ in range(60):
        j = sample_jitter(24, 40, 8, 2.0, g)
        torch.testing.assert_close(apply_jitter(x, j), reference_jitter(x, j), atol=1e-10, rtol=0)


@pytest.mark.parametrize("jitter", [
    Jitter(pad=5, zoom=1.0, top=0, left=10, flip=False),
    Jitter(pad=5, zoom=1.0, top=10, left=0, flip=True),
    Jitter(pad=5, zoom=1.7, top=0, left=0, flip=False),
    Jitter(pad=5, zoom=1.7, top=int(30 * 1.7) - 20, left=int(38 * 1.7) - 28, flip=True),
])
def test_extreme_crops_match_reference(jitter):
    x = torch.randn(1, 2, 20, 28, dtype=torch.float64)
    torch.testing.assert_close(apply_jitter(x, jitter), reference_jitter(x, jitter), atol=1e-10, rtol=0)


def test_image_and_features_get_the_same_transform():
    g = torch.Generator().manual_seed(3)
    image = torch.rand(1, 3, 32, 32)
    features = torch.cat([image, image.mean(1, keepdim=True)], 1)  # a "feature map" built from the image
    for _ in range(10):
        j = sample_jitter(32, 32, 6, 1.8, g)
        torch.testing.assert_close(apply_jitter(features, j)[:, :3], apply_jitter(image, j))


def test_one_view_per_jitter_from_a_single_image():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 16, 16)
    jitters = [sample_jitter(16, 16, 4, 2.0, g) for _ in range(5)]
    batched = apply_jitter(x, jitters)
    assert batched.shape == (5, 4, 16, 16)
    for view, j in zip(batched, jitters):
        torch.testing.assert_close(view[None], apply_jitter(x, j))


def test_sampling_is_seeded_and_covers_zoom_and_flip():
    draws = [sample_jitter(64, 64, 20, 2.0, torch.Generator().manual_seed(s)) for s in range(200)]
    again = [sample_jitter(64, 64, 20, 2.0, torch.Generator().manual_seed(s)) for s in range(200)]
    assert draws == again
    zooms = [d.zoom for d in draws]
    assert 0.3 < sum(z == 1.0 for z in zooms) / 200 < 0.7
    assert all(1.0 <= z <= 2.0 for z in zooms)
    assert 0.3 < sum(d.flip for d in draws) / 200 < 0.7
    assert all(d.pad == 20 for d in draws)


def test_gradients_flow_to_the_input():
    x = torch.randn(1, 2, 12, 12, requires_grad=True)
    j = Jitter(pad=3, zoom=1.4, top=2, left=5, flip=True)
    apply_jitter(x, j).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_bad_inputs_raise_with_a_reason():
    with pytest.raises(ValueError, match="max_pad"):
        sample_jitter(10, 10, 10, 1.5, torch.Generator())
    with pytest.raises(ValueError, match="crop offset"):
        apply_jitter(torch.randn(1, 1, 10, 10), Jitter(pad=2, zoom=1.0, top=9, left=0, flip=False))
    with pytest.raises(ValueError, match="jitters for a batch"):
        apply_jitter(torch.randn(2, 1, 10, 10), [Jitter(2, 1.0, 0, 0, False)] * 3)


def test_half_precision_inputs_sample_at_float32_coordinates():
    x = torch.randn(1, 2, 224, 224)
    j = Jitter(pad=20, zoom=1.9, top=200, left=190, flip=True)
    out = apply_jitter(x.bfloat16(), j)
    assert out.dtype == torch.bfloat16
    # Only the values' own rounding (2⁻⁸ relative) remains: a misplaced sample would be off by O(1).
    torch.testing.assert_close(out.float(), apply_jitter(x, j), atol=0.05, rtol=0.01)
