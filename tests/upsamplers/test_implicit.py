import pytest
import torch

import featup.upsamplers.implicit as implicit_module
from featup.upsamplers import create_upsampler, list_upsamplers, load_upsampler
from featup.upsamplers.implicit import ChannelDropout, ImplicitUpsampler


def fitted_like(dim: int = 12, size=(20, 28), seed: int = 0) -> ImplicitUpsampler:
    """An ImplicitUpsampler with an image and a PCA set, as fit_implicit leaves it (weights untrained)."""
    torch.manual_seed(seed)
    model = ImplicitUpsampler(dim, size, proj_dim=8)
    model.set_image(torch.rand(1, 3, *size))
    basis, _ = torch.linalg.qr(torch.randn(dim, dim))
    model.set_pca(torch.randn(dim), basis[:8].contiguous())
    return model.eval()


def test_registered_and_created_through_the_registry():
    assert "implicit" in list_upsamplers()
    model = create_upsampler("implicit", dim=16, image_size=(8, 8))
    assert isinstance(model, ImplicitUpsampler) and model.proj_dim == 16


def test_renders_at_any_size_with_the_backbones_channels():
    model = fitted_like()
    features = torch.randn(2, 12, 5, 7)
    image = torch.rand(2, 3, 20, 28)
    with torch.no_grad():
        assert model(features, image).shape == (2, 12, 20, 28)
        assert model(features, image, output_size=(45, 33)).shape == (2, 12, 45, 33)
        assert model(features, image, output_size=64).shape == (2, 12, 64, 64)
    with pytest.raises(ValueError, match="channels"):
        model(torch.randn(1, 5, 5, 7), image[:1])


def test_chunked_rendering_equals_one_pass(monkeypatch):
    model = fitted_like()
    with torch.no_grad():
        whole = model.render((40, 30))
        monkeypatch.setattr(implicit_module, "_CHUNK_PIXELS", 100)
        chunked = model.render((40, 30))
    torch.testing.assert_close(chunked, whole)


def test_pca_round_trip_is_exact_within_the_subspace():
    model = fitted_like()
    reduced = torch.randn(1, 8, 3, 3)
    torch.testing.assert_close(model.to_pca(model.from_pca(reduced)), reduced, atol=1e-5, rtol=0)


def test_save_load_restores_identical_renders_and_is_small(tmp_path):
    model = fitted_like(dim=384, size=(224, 224))
    path = tmp_path / "implicit.pt"
    model.save(path)
    assert path.stat().st_size < 1_000_000
    for loaded in (ImplicitUpsampler.load(path), load_upsampler("implicit", checkpoint=path)):
        with torch.no_grad():
            torch.testing.assert_close(loaded.render((32, 32)), model.render((32, 32)))
    assert torch.load(path, weights_only=True)["metadata"]["upsampler"] == "implicit"


def test_load_rejects_another_upsamplers_checkpoint(tmp_path):
    from featup.checkpoints import save_checkpoint

    save_checkpoint(tmp_path / "jbu.pt", torch.nn.Linear(2, 2), {"upsampler": "jbu"})
    with pytest.raises(ValueError, match="not an implicit"):
        ImplicitUpsampler.load(tmp_path / "jbu.pt")


def test_image_is_stored_quantised_with_its_colour_range():
    model = ImplicitUpsampler(4, (2, 2))
    image = torch.tensor([[[[0.2, 0.4], [0.6, 0.8]]]]).expand(1, 3, 2, 2)
    model.set_image(image)
    assert model.image.dtype == torch.uint8
    torch.testing.assert_close(model.fitted_image(), image, atol=1 / 255, rtol=0)
    torch.testing.assert_close(model.color_min, torch.full((3,), 51 / 255))
    with pytest.raises(ValueError, match="expected a 1×3×2×2"):
        model.set_image(torch.rand(1, 3, 4, 4))


def test_fourier_features_have_the_published_width():
    model = fitted_like()
    assert model.fourier_features(model.fitted_image()).shape == (1, 20, 28, 2 * 5 * 30 + 3)


def test_channel_dropout_drops_whole_channels_only_in_training():
    drop = ChannelDropout(0.5)
    x = torch.ones(2, 6, 6, 40)
    torch.manual_seed(0)
    out = drop(x)
    per_channel = out.permute(0, 3, 1, 2).flatten(2)
    assert ((per_channel == 0).all(-1) | (per_channel == 2).all(-1)).all()
    assert (per_channel == 0).all(-1).any()
    drop.eval()
    assert torch.equal(drop(x), x)


GUIDES = {"guided": {"sigma_spatial": 0.5, "sigma_range": 0.1, "radius": 2, "iterations": 3},
          "guided-staged": {"sigma_spatial": 0.5, "sigma_range": 0.25, "radius": 2, "iterations": 0, "step": 2},
          "bilateral": {"spatial_sigma": 0.35, "colour_sigma": 0.05}, "bilinear": {}}


@pytest.mark.parametrize("guide_name", ["guided", "guided-staged", "bilinear", "bilateral"])
def test_a_base_keeps_every_direction_of_the_features_not_only_the_pca_space(guide_name):
    # A 1280-channel head fitted in 128 PCA directions lost the other directions' meaning (pooled cosine
    # 0.90): before the MLP has learned anything, the model must render exactly the base's upsampling of
    # ALL the features.
    torch.manual_seed(0)
    dim, grid, size = 12, (5, 7), (20, 28)
    base_mode, guide = guide_name.removesuffix("-staged"), GUIDES[guide_name]
    model = ImplicitUpsampler(dim, size, proj_dim=4, base_grid=grid, base_mode=base_mode, guide=guide)
    image = torch.rand(1, 3, *size)
    model.set_image(image)
    basis, _ = torch.linalg.qr(torch.randn(dim, dim))
    model.set_pca(torch.randn(dim), basis[:4].contiguous(), scale=2.0)
    low = torch.randn(1, dim, *grid)
    model.set_base(model.to_pca(low))
    torch.nn.init.zeros_(model.net[-1].weight)
    torch.nn.init.zeros_(model.net[-1].bias)
    with torch.no_grad():
        out = model.eval()(low, image)
        # A bilateral base is the classical filter of the registry: the fit starts from that baseline exactly.
        expected = {"guided": lambda: implicit_module.guided_upsample(low, model.fitted_image(), **guide),
                    "bilateral": lambda: create_upsampler("bilateral", **guide)(low, model.fitted_image()),
                    "bilinear": lambda: torch.nn.functional.interpolate(low, size=size, mode="bilinear",
                                                                        align_corners=False)}[base_mode]()
        torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)
        pca_only = model.from_pca(model.render())
    assert (pca_only - expected).abs().max() > 0.1  # the PCA space alone would have lost the rest
