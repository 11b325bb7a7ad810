import pytest
import torch

from featup.pca import principal_directions


def test_directions_follow_the_variance_in_order():
    g = torch.Generator().manual_seed(0)
    axes = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))[0].T  # orthonormal rows
    spread = torch.tensor([5.0, 3.0, 1.0, 0.1, 0.01, 0.001], dtype=torch.float64)
    pixels = (torch.randn(20_000, 6, generator=g, dtype=torch.float64) * spread) @ axes + 7.0
    mean, components, share = principal_directions(pixels.float(), 3)
    assert components.shape == (3, 6) and share.shape == (3,)
    torch.testing.assert_close(mean, torch.full((6,), 7.0, dtype=torch.float64), atol=0.1, rtol=0)
    torch.testing.assert_close(components @ components.T, torch.eye(3, dtype=torch.float64), atol=1e-6, rtol=0)
    # Each direction is the planted axis up to sign, strongest first.
    assert ((components * axes[:3]).sum(1).abs() > 0.999).all()
    expected = spread[:3] ** 2 / (spread**2).sum()
    torch.testing.assert_close(share, expected, atol=0.01, rtol=0)


def test_bad_shapes_and_k_are_named():
    with pytest.raises(ValueError, match="M×C"):
        principal_directions(torch.zeros(2, 3, 4), 1)
    with pytest.raises(ValueError, match="1..3"):
        principal_directions(torch.zeros(10, 3), 4)
