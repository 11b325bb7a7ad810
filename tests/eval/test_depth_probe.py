"""The depth probe with the scale-and-shift-invariant loss, on features with known answers."""

import pytest
import torch

from featup.eval.depth_probe import (
    evaluate_depth_probe,
    fit_depth_probe,
    predict_depth,
    reduce_depth,
    ssi_loss,
)


def depth_maps(n: int, size: int = 32, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(1, 8, size)[:, None].expand(size, size)
    return [ramp + 2 * torch.rand(size, size, generator=g) for _ in range(n)]


def noise(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_features_that_linearly_encode_depth_give_rmse_0_and_delta_1():
    pairs = [(torch.stack([3 * d + 1, noise(d.shape, i), noise(d.shape, 10 + i)]), d)
             for i, d in enumerate(depth_maps(4))]
    probe = fit_depth_probe(pairs, pixels_per_image=256, steps=50)
    scores = evaluate_depth_probe(probe, pairs)
    assert scores["rmse"] == pytest.approx(0, abs=1e-3)
    assert scores["delta1"] == 1.0


def test_per_image_scale_and_shift_of_the_encoding_do_not_matter():
    # Each image encodes depth with its own gain and offset: only a scale-and-shift-invariant probe fits all.
    pairs = [(torch.stack([(i + 1) * d - 5 * i, noise(d.shape, i)]), d) for i, d in enumerate(depth_maps(3, seed=1))]
    scores = evaluate_depth_probe(fit_depth_probe(pairs, pixels_per_image=256, steps=300), pairs)
    assert scores["rmse"] == pytest.approx(0, abs=1e-3)


def test_uninformative_features_score_like_a_constant():
    depths = depth_maps(3, seed=2)
    pairs = [(torch.ones(4, 32, 32), d) for d in depths]
    scores = evaluate_depth_probe(fit_depth_probe(pairs, steps=10), pairs)
    expected = torch.stack([d.std(unbiased=False) for d in depths]).mean()
    assert scores["rmse"] == pytest.approx(float(expected), rel=1e-4)


def test_low_res_features_are_scored_against_full_resolution_depth():
    depths = depth_maps(3, seed=3)
    low = [torch.nn.functional.avg_pool2d(d[None, None], 4)[0] for d in depths]  # the exact cell means
    pairs = [(torch.cat([l, noise(l.shape, i)]), d) for i, (l, d) in enumerate(zip(low, depths))]
    probe = fit_depth_probe(pairs, steps=50)
    assert predict_depth(probe, pairs[0][0], (32, 32)).shape == (32, 32)
    coarse = evaluate_depth_probe(probe, pairs)
    # The best a 4×-coarser map can do is the within-cell spread, which is not zero here.
    assert 0.1 < coarse["rmse"] < 1.0


def test_reduce_depth_averages_valid_pixels_only():
    depth = torch.tensor([[1.0, 3.0, 0.0, float("nan")], [5.0, 7.0, 0.0, 0.0]])
    reduced, valid = reduce_depth(depth, (1, 2))
    assert reduced.tolist() == [[4.0, 0.0]] and valid.tolist() == [[True, False]]


def test_ssi_loss_is_invariant_to_scale_and_shift():
    d = torch.rand(2, 50, generator=torch.Generator().manual_seed(0)) + 1
    mask = torch.ones_like(d, dtype=torch.bool)
    p = torch.rand(2, 50, generator=torch.Generator().manual_seed(1))
    assert ssi_loss(-4 * p + 9, d, mask).item() == pytest.approx(ssi_loss(p, d, mask).item(), rel=1e-4)
    assert ssi_loss(3 * d - 1, d, mask).item() == pytest.approx(0, abs=1e-8)


def test_no_valid_depth_raises():
    with pytest.raises(ValueError, match="two valid depth pixels"):
        fit_depth_probe([(torch.ones(2, 4, 4), torch.zeros(4, 4))])
