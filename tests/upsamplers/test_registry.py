"""featup.upsamplers registry: every registered upsampler gets the same interface and checkpoint checks."""

import pytest
import torch

import featup.upsamplers._registry as registry
from featup.backbones import MissingWeightsError
from featup.checkpoints import save_checkpoint
from featup.upsamplers import create_upsampler, list_upsamplers, load_upsampler, register_upsampler

DIM = 6


def perturbed(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Move every parameter off its init, so a checkpoint that fails to load shows in the output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    return module


def sample(batch=2, grid=(7, 9), image=(56, 72)):
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch, DIM, *grid, generator=generator), torch.rand(batch, 3, *image, generator=generator)


def test_builtin_upsamplers_registered():
    assert {"bilinear", "bilateral", "resize_conv", "jbu"} <= set(list_upsamplers())
    assert list_upsamplers() == sorted(list_upsamplers())


@pytest.mark.parametrize("name", list_upsamplers())
@pytest.mark.parametrize(("output_size", "expected"), [(None, (56, 72)), (32, (32, 32)), ((40, 24), (40, 24))])
def test_forward_interface(name, output_size, expected):
    features, image = sample()
    model = create_upsampler(name, dim=DIM).eval()
    with torch.no_grad():
        out = model(features, image, output_size)
    assert out.shape == (2, DIM, *expected)
    assert out.dtype == features.dtype and torch.isfinite(out).all()


@pytest.mark.parametrize("name", list_upsamplers())
def test_checkpoint_round_trip(name, tmp_path):
    features, image = sample()
    model = perturbed(create_upsampler(name, dim=DIM)).eval()
    path = tmp_path / f"{name}.pt"
    save_checkpoint(path, model, {"backbone": "vit_small_patch16_224"})
    loaded = load_upsampler(name, checkpoint=path)
    assert not loaded.training
    assert loaded.upsampler_cfg["backbone"] == "vit_small_patch16_224"
    with torch.no_grad():
        torch.testing.assert_close(loaded(features, image), model(features, image))


def test_unknown_name_lists_registered():
    with pytest.raises(ValueError, match="unknown upsampler 'jbu_stack'; registered: .*bilinear.*jbu.*resize_conv"):
        create_upsampler("jbu_stack", dim=DIM)


def test_missing_dim_rejected():
    with pytest.raises(ValueError, match="pass dim=<feature channels>"):
        create_upsampler("jbu")


def test_duplicate_name_rejected():
    def jbu(dim: int):
        raise AssertionError("never built")

    with pytest.raises(ValueError, match="upsampler 'jbu' is already registered"):
        register_upsampler(jbu)
    assert type(create_upsampler("jbu", dim=DIM)).__name__ == "JBUStack"


def test_parameter_free_upsampler_needs_no_checkpoint():
    assert not load_upsampler("bilinear").training
    assert not load_upsampler("bilinear", backbone="vit_small_patch16_224").training


def test_learned_upsampler_without_weights_rejected():
    with pytest.raises(ValueError, match="has learned weights: pass checkpoint="):
        load_upsampler("jbu", dim=DIM)


def test_missing_shipped_checkpoint_says_how_to_get_one():
    expected = r"no 'jbu' upsampler for backbone 'nope'.*jbu_nope\.pt.*featup\.training"
    with pytest.raises(MissingWeightsError, match=expected):
        load_upsampler("jbu", backbone="nope")


def test_shipped_checkpoint_used_for_backbone(tmp_path, monkeypatch):
    model = perturbed(create_upsampler("jbu", dim=DIM))
    path = tmp_path / "jbu_efficientnet_lite0.pt"
    save_checkpoint(path, model, {"backbone": "efficientnet_lite0"})
    looked_up = []

    def shipped(name, backbone):
        looked_up.append((name, backbone))
        return str(tmp_path / f"{name}_{backbone}.pt")

    monkeypatch.setattr(registry, "shipped_checkpoint", shipped)
    loaded = load_upsampler("jbu", backbone="efficientnet_lite0")
    assert looked_up == [("jbu", "efficientnet_lite0")]
    torch.testing.assert_close(loaded.state_dict(), model.state_dict())


def test_shipped_checkpoint_lives_in_the_package():
    path = registry.shipped_checkpoint("jbu", "efficientnet_lite0")
    assert path.replace("\\", "/").endswith("featup/checkpoints/jbu_efficientnet_lite0.pt")


def test_checkpoint_of_another_upsampler_rejected(tmp_path):
    path = tmp_path / "jbu.pt"
    save_checkpoint(path, create_upsampler("jbu", dim=DIM), {})
    with pytest.raises(ValueError, match="holds a 'jbu' upsampler, not 'resize_conv'"):
        load_upsampler("resize_conv", checkpoint=path)


def test_checkpoint_of_another_backbone_rejected(tmp_path):
    path = tmp_path / "jbu.pt"
    save_checkpoint(path, create_upsampler("jbu", dim=DIM), {"backbone": "dinov2_vits14"})
    with pytest.raises(ValueError, match="trained on backbone 'dinov2_vits14', not 'vit_small_patch16_224'"):
        load_upsampler("jbu", backbone="vit_small_patch16_224", checkpoint=path)


def test_loading_is_strict():
    state = create_upsampler("jbu", dim=DIM).state_dict()
    del state["up2.sigma_spatial"]
    with pytest.raises(ValueError, match="up2.sigma_spatial"):
        load_upsampler("jbu", checkpoint=state, dim=DIM)


def test_options_from_metadata_rebuild_the_model(tmp_path):
    model = create_upsampler("jbu", dim=DIM, num_layers=2, radius=2)
    path = tmp_path / "jbu.pt"
    save_checkpoint(path, model, {})
    loaded = load_upsampler("jbu", checkpoint=path)
    assert loaded.num_layers == 2 and loaded.radius == 2 and loaded.dim == DIM
