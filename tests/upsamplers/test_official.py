"""featup.upsamplers.official: published FeatUp JBU checkpoints load strictly and match the published forward."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from featup.backbones import IMAGENET_MEAN, IMAGENET_STD
from featup.checkpoints import load_checkpoint
from featup.ops import BACKEND_ENV_VAR
from featup.upsamplers import JBUStack
from featup.upsamplers.official import load_official_jbu


class PublishedJBULayer(nn.Module):
    """The published JBULearnedRange forward, as released: unfolded keys, einsum, unfold-based adaptive conv."""

    def __init__(self, radius: int = 3, key_dim: int = 32):
        super().__init__()
        self.radius, self.diameter, self.key_dim = radius, 2 * radius + 1, key_dim
        taps = self.diameter**2
        self.range_temp = nn.Parameter(torch.tensor(0.0))
        self.range_proj = nn.Sequential(
            nn.Conv2d(3, key_dim, 1, 1), nn.GELU(), nn.Dropout2d(0.1), nn.Conv2d(key_dim, key_dim, 1, 1)
        )
        self.fixup_proj = nn.Sequential(
            nn.Conv2d(3 + taps, taps, 1, 1), nn.GELU(), nn.Dropout2d(0.1), nn.Conv2d(taps, taps, 1, 1)
        )
        self.sigma_spatial = nn.Parameter(torch.tensor(1.0))

    def forward(self, source, guidance):
        b, _, gh, gw = guidance.shape
        d, r = self.diameter, self.radius
        proj = self.range_proj(guidance)
        queries = nn.Unfold(d)(F.pad(proj, [r] * 4, mode="reflect"))
        queries = queries.reshape(b, self.key_dim, d * d, gh, gw).permute(0, 1, 3, 4, 2)
        temperature = self.range_temp.exp().clamp_min(1e-4).clamp_max(1e4)
        range_kernel = F.softmax(temperature * torch.einsum("bchwp,bchw->bphw", queries, proj), dim=1)
        grid = torch.linspace(-1, 1, d)
        rows, cols = torch.meshgrid(grid, grid, indexing="ij")
        patch = torch.stack([rows, cols])
        spatial = torch.exp(-patch.square().sum(0) / (2 * self.sigma_spatial**2)).reshape(1, d * d, 1, 1)
        combined = range_kernel * spatial
        combined /= combined.sum(1, keepdim=True).clamp(1e-7)
        combined += 0.1 * self.fixup_proj(torch.cat([combined, guidance], dim=1))
        combined = combined.permute(0, 2, 3, 1).reshape(b, gh, gw, d, d)
        hr = nn.Upsample((gh, gw), mode="bicubic", align_corners=False)(source)
        hr = F.pad(hr, [r] * 4, mode="reflect")
        neighbourhoods = F.unfold(hr, d).reshape(b, hr.shape[1], d * d, gh, gw)
        return torch.einsum("bcphw,bhwp->bchw", neighbourhoods, combined.reshape(b, gh, gw, d * d))


class PublishedJBUStack(nn.Module):
    """The published JBUStack: four layers, each doubling the grid, then a 0.1-weighted 1×1 fixup."""

    def __init__(self, dim: int):
        super().__init__()
        self.up1, self.up2, self.up3, self.up4 = (PublishedJBULayer() for _ in range(4))
        self.fixup_proj = nn.Sequential(nn.Dropout2d(0.2), nn.Conv2d(dim, dim, kernel_size=1))

    def forward(self, source, guidance):
        for up in (self.up1, self.up2, self.up3, self.up4):
            h, w = source.shape[-2:]
            source = up(source, F.adaptive_avg_pool2d(guidance, (h * 2, w * 2)))
        return self.fixup_proj(source) * 0.1 + source


def published_checkpoint(dim: int, seed: int = 0, norm: bool = True) -> tuple[dict, PublishedJBUStack]:
    """A Lightning checkpoint in the published key layout with random weights, and the reference model."""
    generator = torch.Generator().manual_seed(seed)
    reference = PublishedJBUStack(dim).eval()
    with torch.no_grad():
        for k, layer in enumerate((reference.up1, reference.up2, reference.up3, reference.up4)):
            layer.range_temp.fill_(0.3 * k - 0.2)
            layer.sigma_spatial.fill_(0.6 + 0.2 * k)
        for parameter in reference.parameters():
            if parameter.dim() > 0:
                parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator))
    state = {f"upsampler.{key}": value for key, value in reference.state_dict().items()}
    state["downsampler.kernel_params"] = torch.randn(16, 16, generator=generator)
    state["scale_net.0.weight"] = torch.randn(1, dim, 1, 1, generator=generator)
    state["model.0.blocks.0.attn.qkv.weight"] = torch.randn(3 * dim, dim, generator=generator)
    if norm:
        state["model.1.norm.weight"] = torch.rand(dim, generator=generator) + 0.5
        state["model.1.norm.bias"] = torch.randn(dim, generator=generator)
    checkpoint = {"state_dict": state, "epoch": 3, "global_step": 2000, "hyper_parameters": {"model_type": "vit"}}
    return checkpoint, reference


def test_published_key_layout():
    checkpoint, _ = published_checkpoint(dim=8)
    layer_keys = [
        "range_temp", "sigma_spatial", "range_proj.0.weight", "range_proj.0.bias", "range_proj.3.weight",
        "range_proj.3.bias", "fixup_proj.0.weight", "fixup_proj.0.bias", "fixup_proj.3.weight", "fixup_proj.3.bias",
    ]
    expected = {f"upsampler.up{k}.{key}" for k in range(1, 5) for key in layer_keys}
    expected |= {"upsampler.fixup_proj.1.weight", "upsampler.fixup_proj.1.bias"}
    assert {key for key in checkpoint["state_dict"] if key.startswith("upsampler.")} == expected


def test_official_jbu_matches_published_forward(monkeypatch):
    monkeypatch.setenv(BACKEND_ENV_VAR, "torch")
    dim = 11
    checkpoint, reference = published_checkpoint(dim)
    official = load_official_jbu(checkpoint)
    assert isinstance(official.upsampler, JBUStack) and not official.upsampler.training
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(2, dim, 5, 6, generator=generator)
    image = torch.rand(2, 3, 80, 96, generator=generator)  # 16× the grid: where the published stack lands
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    normalised = (image - mean) / std
    with torch.no_grad():
        ours = official.upsampler(features, image)
        expected = reference(features, normalised)
    assert ours.shape == expected.shape == (2, dim, 80, 96)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_official_channel_norm_returned():
    checkpoint, _ = published_checkpoint(dim=8)
    official = load_official_jbu(checkpoint)
    state = checkpoint["state_dict"]
    torch.testing.assert_close(official.channel_norm.norm.weight, state["model.1.norm.weight"])
    features = torch.randn(1, 8, 3, 4)
    weight, bias = state["model.1.norm.weight"], state["model.1.norm.bias"]
    expected = F.layer_norm(features.permute(0, 2, 3, 1), (8,), weight, bias)
    torch.testing.assert_close(official.channel_norm(features), expected.permute(0, 3, 1, 2))
    no_norm, _ = published_checkpoint(dim=8, norm=False)
    assert load_official_jbu(no_norm).channel_norm is None


def test_official_checkpoint_from_a_file(tmp_path):
    checkpoint, _ = published_checkpoint(dim=8)
    torch.save(checkpoint, tmp_path / "vit_jbu_stack_cocostuff.ckpt")
    official = load_official_jbu(tmp_path / "vit_jbu_stack_cocostuff.ckpt")
    assert official.upsampler.dim == 8
    weight = checkpoint["state_dict"]["upsampler.up3.range_proj.3.weight"]
    torch.testing.assert_close(official.upsampler.up3.range_proj[3].weight, weight)
    with pytest.raises(ValueError, match="published FeatUp checkpoint; import it with .*load_official_jbu"):
        load_checkpoint(tmp_path / "vit_jbu_stack_cocostuff.ckpt")


def test_official_missing_key_named():
    checkpoint, _ = published_checkpoint(dim=8)
    del checkpoint["state_dict"]["upsampler.up2.range_proj.3.bias"]
    with pytest.raises(ValueError, match=r"missing \['upsampler.up2.range_proj.3.bias'\], unexpected \[\]"):
        load_official_jbu(checkpoint)


def test_official_unexpected_key_named():
    checkpoint, _ = published_checkpoint(dim=8)
    checkpoint["state_dict"]["upsampler.up1.extra_gain"] = torch.ones(())
    with pytest.raises(ValueError, match=r"unexpected \['upsampler.up1.extra_gain'\]"):
        load_official_jbu(checkpoint)


def test_official_wrong_shape_rejected():
    checkpoint, _ = published_checkpoint(dim=8)
    checkpoint["state_dict"]["upsampler.up1.range_proj.3.weight"] = torch.zeros(32, 16, 1, 1)
    with pytest.raises(ValueError, match="size mismatch for up1.range_proj.3.weight"):
        load_official_jbu(checkpoint)


def test_not_a_jbu_checkpoint_rejected():
    with pytest.raises(ValueError, match="not a FeatUp JBU checkpoint"):
        load_official_jbu({"state_dict": {"model.0.weight": torch.zeros(2)}})
