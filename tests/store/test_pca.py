"""PCA-k: exact on low-rank features, deterministic, ordered by variance."""

from __future__ import annotations

import numpy as np
import pytest

from featup.store.pca import fit_pca


def low_rank(rank=3, channels=12, seed=0):
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((channels, rank)))[0]
    scales = np.array([5.0, 2.0, 0.5])[:rank]
    coeffs = rng.standard_normal((4, rank, 6, 7)) * scales[None, :, None, None]
    return np.einsum("ck,bkhw->bchw", basis, coeffs).astype(np.float32) + 1.0


def test_low_rank_features_are_reconstructed_from_k_components():
    feats = low_rank()
    pca = fit_pca(feats, 3)
    z = pca.project(feats)
    assert z.shape == (4, 3, 6, 7)
    np.testing.assert_allclose(pca.reconstruct(z), feats, atol=1e-4)
    assert list(pca.explained_variance_ratio) == sorted(pca.explained_variance_ratio, reverse=True)
    np.testing.assert_allclose(pca.components @ pca.components.T, np.eye(3), atol=1e-5)


def test_fewer_components_lose_the_smallest_variance_only():
    feats = low_rank()
    pca = fit_pca(feats, 2)
    err = np.mean((pca.reconstruct(pca.project(feats)) - feats) ** 2)
    assert 0 < err < 0.5**2  # about the variance of the dropped (σ = 0.5) direction


def test_subsampling_is_seeded():
    feats = low_rank()
    a, b = fit_pca(feats, 2, max_pixels=50, seed=1), fit_pca(feats, 2, max_pixels=50, seed=1)
    np.testing.assert_array_equal(a.components, b.components)


def test_bad_k_is_refused():
    with pytest.raises(ValueError, match="1..12"):
        fit_pca(low_rank(), 13)
