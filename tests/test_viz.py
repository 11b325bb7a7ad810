"""PCA images: one basis for maps shown together, PNGs written to any fsspec URL."""

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from featup.viz import fit_pca, pca_rgb, save_png, side_by_side


def _smooth_features(seed: int, c: int = 16, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.randn(1, c, 4, 4, generator=g), size=(size, size), mode="bilinear")[0]


def test_joint_basis_gives_low_and_high_res_the_same_colours():
    high = _smooth_features(0)
    low = F.avg_pool2d(high[None], 8)[0]
    low_rgb, high_rgb = pca_rgb([low, high])
    assert low_rgb.shape == (3, 4, 4) and high_rgb.shape == (3, 32, 32)
    assert 0 <= low_rgb.min() and high_rgb.max() <= 1
    # Pooling the high-res colours lands close to the low-res colours: one basis, one palette.
    assert (F.avg_pool2d(high_rgb[None], 8)[0] - low_rgb).abs().mean() < 0.05
    # Separate bases would not agree: the second component's sign/scale is arbitrary per fit.
    separate = pca_rgb([low])[0]
    assert separate.shape == low_rgb.shape


def test_pca_is_deterministic_and_orders_components_by_variance():
    x = torch.zeros(3, 10, 10)
    x[0] = torch.linspace(-5, 5, 10)[None, :]  # large variance along columns
    x[1] = torch.linspace(-1, 1, 10)[:, None]  # small variance along rows
    basis = fit_pca([x], k=2)
    assert basis.components[:, 0].abs().argmax().item() == 0
    assert basis.components[:, 1].abs().argmax().item() == 1
    again = fit_pca([x], k=2)
    assert torch.equal(basis.components, again.components)


def test_mismatched_channels_are_rejected():
    import pytest

    with pytest.raises(ValueError, match="same channel count"):
        fit_pca([torch.rand(3, 4, 4), torch.rand(5, 4, 4)])


def test_save_png_to_local_path_and_memory_url(tmp_path):
    strip = side_by_side([torch.rand(3, 4, 4), torch.rand(3, 32, 32)], size=32, gap=2)
    assert strip.shape == (3, 32, 66)
    path = save_png(strip, str(tmp_path / "sub" / "strip.png"))
    assert np.asarray(Image.open(path)).shape == (32, 66, 3)
    import fsspec

    save_png(strip, "memory://viz/strip.png")
    with fsspec.open("memory://viz/strip.png", "rb") as f:
        assert Image.open(f).size == (66, 32)


def test_titles_name_each_panel_above_its_tile():
    tiles = [torch.zeros(3, 4, 4), torch.zeros(3, 32, 32), torch.zeros(3, 32, 32)]
    plain = side_by_side(tiles, size=96, gap=4)
    titled = side_by_side(tiles, size=96, gap=4, titles=["image", "lowres 4×4", "a very long upsampler name 224×224"])
    band = titled.shape[1] - plain.shape[1]
    assert band > 8 and titled.shape[2] == plain.shape[2]
    assert torch.equal(titled[:, band:], plain)  # the pictures themselves are untouched
    ink = titled[:, :band].mean(0) < 0.5  # dark text on white
    for i in range(3):  # every title is drawn, and inside its own tile's columns
        columns = ink[:, i * 100:i * 100 + 96]
        assert columns.any()
        assert not ink[:, i * 100 + 96:i * 100 + 100].any()  # nothing spills into the gap


def test_titles_must_match_the_images():
    import pytest

    with pytest.raises(ValueError, match="one title per image"):
        side_by_side([torch.zeros(3, 4, 4)] * 2, size=8, titles=["only one"])
