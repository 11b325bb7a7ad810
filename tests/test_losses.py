import math

import pytest
import torch

from featup.losses import (
    UncertaintyScale,
    blur_pin_loss,
    gaussian_nll,
    magnitude,
    magnitude_loss,
    project,
    random_projection,
    total_variation,
)


def test_uncertainty_scale_starts_near_exp_point_one_and_is_clamped():
    torch.manual_seed(0)
    scale = UncertaintyScale(16)
    s = scale(torch.randn(2, 16, 5, 5))
    assert s.shape == (2, 1, 5, 5)
    assert (s - math.exp(0.1)).abs().max() < 0.3
    with torch.no_grad():
        scale.net.bias.fill_(-100)
    assert scale(torch.zeros(1, 16, 2, 2)).min().item() == pytest.approx(1e-4)


def test_gaussian_nll_is_mse_over_two_s_squared_plus_log_s():
    pred, target = torch.zeros(1, 2, 1, 1), torch.tensor([1.0, 3.0]).view(1, 2, 1, 1)
    scale = torch.full((1, 1, 1, 1), 2.0)
    expected = ((1 / 8) + (9 / 8)) / 2 + math.log(2.0)
    assert gaussian_nll(pred, target, scale).item() == pytest.approx(expected)


def test_larger_scale_lowers_the_loss_only_where_errors_are_large():
    pred, target = torch.zeros(1, 1, 1, 2), torch.tensor([0.01, 5.0]).view(1, 1, 1, 2)
    small, large = torch.full((1, 1, 1, 2), 0.5), torch.full((1, 1, 1, 2), 3.0)
    per_pixel = lambda s: ((pred - target).square() / (2 * s.square()) + s.log()).flatten()
    assert per_pixel(large)[1] < per_pixel(small)[1]
    assert per_pixel(large)[0] > per_pixel(small)[0]
    with pytest.raises(ValueError, match="differ in shape"):
        gaussian_nll(pred, target[:, :, :, :1], small)


def test_random_projection_is_seeded_per_view_with_unit_columns():
    p = random_projection(3, 64, 30, generator=torch.Generator().manual_seed(0))
    q = random_projection(3, 64, 30, generator=torch.Generator().manual_seed(0))
    assert p.shape == (3, 64, 30)
    torch.testing.assert_close(p, q)
    torch.testing.assert_close(p.norm(dim=1), torch.ones(3, 30))
    assert not torch.allclose(p[0], p[1])


def test_project_applies_each_views_projection():
    x = torch.randn(2, 4, 3, 3)
    proj = random_projection(2, 4, 2, generator=torch.Generator().manual_seed(1))
    out = project(x, proj)
    torch.testing.assert_close(out[1, :, 2, 0], proj[1].T @ x[1, :, 2, 0])
    with pytest.raises(ValueError, match="projection"):
        project(x, proj[:1])


def test_magnitude_and_magnitude_loss():
    x = torch.tensor([3.0, 4.0]).view(1, 2, 1, 1)
    assert magnitude(x).item() == pytest.approx(5.0)
    assert magnitude_loss(torch.full((1, 1, 1, 1), 4.0), x).item() == pytest.approx(1.0)


def test_total_variation_is_zero_for_constants_and_counts_steps():
    assert total_variation(torch.ones(1, 1, 4, 4)).item() == 0
    step = torch.zeros(1, 1, 2, 2)
    step[..., 1] = 1  # two horizontal unit jumps over four elements
    assert total_variation(step).item() == pytest.approx(0.5)


def test_blur_pin_penalises_high_frequencies_only():
    smooth = torch.linspace(0, 1, 16).view(1, 1, 1, 16).expand(1, 2, 16, 16)
    noisy = torch.randn(1, 2, 16, 16, generator=torch.Generator().manual_seed(0))
    assert blur_pin_loss(smooth).item() < 1e-3
    assert blur_pin_loss(noisy).item() > 0.3


def test_crf_loss_is_zero_for_constant_features_and_penalises_changes_within_a_colour():
    from featup.losses import crf_loss

    g = torch.Generator().manual_seed(0)
    image = torch.zeros(1, 3, 16, 16)
    image[..., 8:] = 1.0
    constant = torch.ones(1, 4, 16, 16)
    assert crf_loss(image, constant, torch.Generator().manual_seed(0), 200).item() < 1e-10
    along_colours = image[:, :1].expand(1, 4, 16, 16)  # changes only where the colour does
    across_colours = torch.randn(1, 4, 16, 16, generator=g)
    assert (crf_loss(image, along_colours, torch.Generator().manual_seed(0), 200)
            < crf_loss(image, across_colours, torch.Generator().manual_seed(0), 200))
    with pytest.raises(ValueError, match="same batch and size"):
        crf_loss(image, torch.ones(1, 4, 8, 8), g)


def test_crf_loss_matches_the_direct_pairwise_sum_in_value_and_gradient():
    from featup.losses import crf_loss

    g = torch.Generator().manual_seed(3)
    image = torch.rand(2, 3, 12, 10, generator=g)
    features = (torch.randn(2, 5, 12, 10, generator=g) * 3 + 7).requires_grad_()
    fast = crf_loss(image, features, torch.Generator().manual_seed(1), 50)
    (fast_grad,) = torch.autograd.grad(fast, features)

    gen = torch.Generator().manual_seed(1)
    ys, xs = torch.randint(0, 12, (50,), generator=gen), torch.randint(0, 10, (50,), generator=gen)
    coords = torch.stack([ys / 12, xs / 10])
    du = (coords[:, :, None] - coords[:, None, :]).square().sum(0)
    colours = image[:, :, ys, xs]
    dg = (colours[..., None] - colours[..., None, :]).square().sum(1)
    kernel = 10 * torch.exp(-du / 0.2 - dg / 0.3) + 3 * torch.exp(-du / 0.01)
    picked = features[:, :, ys, xs]
    direct = ((picked[..., None] - picked[..., None, :]).square().sum(1) * kernel).mean()
    (direct_grad,) = torch.autograd.grad(direct, features)
    torch.testing.assert_close(fast, direct, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast_grad, direct_grad, rtol=1e-4, atol=1e-6)
