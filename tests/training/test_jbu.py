import pytest
import torch

from featup.synthetic import synthetic_images
from featup.training import train_jbu, training_state_path
from featup.upsamplers import JBUStack, create_upsampler, load_upsampler

SIZE, STRIDE, DIM = 32, 8, 8


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return synthetic_images(6, SIZE, seed=3)


def small_jbu(backbone, images, steps, **kwargs):
    torch.manual_seed(123)  # the upsampler's init is the caller's; train_jbu seeds everything after it
    upsampler = create_upsampler("jbu", dim=DIM, num_layers=2)
    options = dict(upsampler=upsampler, batch_size=2, num_jitters=2, image_size=SIZE, max_pad=3, progress=False)
    return train_jbu(backbone, images, steps, **{**options, **kwargs})


def test_train_jbu_returns_a_trained_stack_and_a_loss_log(backbone, images):
    records = []
    model, history = small_jbu(backbone, images, 3, log=records.append)
    assert isinstance(model, JBUStack) and not model.training
    assert [r["step"] for r in history] == [1, 2, 3] and records == history
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in history)
    with torch.no_grad():
        out = model(backbone(backbone.normalize(images[:1])), images[:1])
    assert out.shape == (1, DIM, SIZE, SIZE)


def test_train_jbu_is_seeded(backbone, images):
    first, history_a = small_jbu(backbone, images, 2, seed=7)
    second, history_b = small_jbu(backbone, images, 2, seed=7)
    assert history_a == history_b
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        torch.testing.assert_close(a, b)
    _, history_c = small_jbu(backbone, images, 2, seed=8)
    assert history_c != history_a


def test_resumed_training_matches_an_uninterrupted_run(backbone, images, tmp_path):
    straight, history = small_jbu(backbone, images, 4)
    path = tmp_path / "jbu.pt"
    small_jbu(backbone, images, 2, checkpoint=path, checkpoint_every=1)
    state = torch.load(training_state_path(path), weights_only=True)
    assert state["metadata"]["step"] == 2
    resumed, resumed_history = small_jbu(backbone, images, 4, checkpoint=path, resume=True)
    assert resumed_history == history
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b)
    loaded = load_upsampler("jbu", checkpoint=path, backbone="synthetic")
    for a, b in zip(loaded.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_resume_refuses_other_settings(backbone, images, tmp_path):
    path = tmp_path / "jbu.pt"
    small_jbu(backbone, images, 1, checkpoint=path)
    with pytest.raises(ValueError, match="lr"):
        small_jbu(backbone, images, 2, checkpoint=path, resume=True, lr=5e-3)


def test_the_contrast_term_adds_to_the_loss_and_a_resume_may_change_it_on_the_record(backbone, images, tmp_path):
    _, plain = small_jbu(backbone, images, 1)
    _, kept = small_jbu(backbone, images, 1, contrast_weight=1.0)
    assert kept[0]["mse"] == plain[0]["mse"] and kept[0]["loss"] > plain[0]["loss"]  # same step, one more term
    path = tmp_path / "jbu.pt"
    small_jbu(backbone, images, 1, checkpoint=path, contrast_weight=1.0)
    _, history = small_jbu(backbone, images, 2, checkpoint=path, resume=True, contrast_weight=3.0)
    _, same_weight = small_jbu(backbone, images, 2, contrast_weight=1.0)
    assert history[0] == same_weight[0] and history[1]["mse"] == same_weight[1]["mse"]  # the weight moves step 2
    assert history[1]["loss"] > same_weight[1]["loss"]
    _, again = small_jbu(backbone, images, 3, checkpoint=path, resume=True, contrast_weight=3.0, crf_weight=0.5)
    assert len(again) == 3
    changes = [{"step": 1, "contrast_weight": [1.0, 3.0]}, {"step": 2, "crf_weight": [0.0, 0.5]}]
    assert torch.load(training_state_path(path), weights_only=True)["metadata"]["changes"] == changes
    assert torch.load(path, weights_only=True)["metadata"]["training_changes"] == changes


def test_without_layer_fixups_the_layers_keep_positive_taps_and_a_resume_must_agree(backbone, images, tmp_path):
    path = tmp_path / "jbu.pt"
    torch.manual_seed(123)  # small_jbu's upsampler, untrained
    start = create_upsampler("jbu", dim=DIM, num_layers=2)
    model, _ = small_jbu(backbone, images, 3, layer_fixups=False, checkpoint=path)
    for layer, before in zip(model.layers, start.layers):
        assert not layer.fixup_proj[-1].weight.any() and not layer.fixup_proj[-1].bias.any()
        assert not torch.equal(layer.range_proj[0].weight, before.range_proj[0].weight)  # the rest learns
        assert (layer.filters(torch.rand(1, 3, 8, 8)) >= 0).all()  # softmax taps, no signed correction
    assert model.fixup_proj[1].weight.abs().sum() > 0  # the stack's 1×1 channel fixup still learns
    with pytest.raises(ValueError, match="layer_fixups"):
        small_jbu(backbone, images, 4, checkpoint=path, resume=True)
    resumed, history = small_jbu(backbone, images, 4, checkpoint=path, resume=True, layer_fixups=False)
    assert len(history) == 4 and not resumed.layers[0].fixup_proj[-1].weight.any()
    with pytest.raises(ValueError, match="layer_fixups=False needs a JBUStack"):
        train_jbu(backbone, images, 1, upsampler=create_upsampler("resize_conv", dim=DIM), layer_fixups=False,
                  image_size=SIZE, progress=False)


def test_simple_downsampler_and_image_sequences_of_any_size(backbone):
    images = [torch.rand(3, 40, 50), torch.rand(3, 33, 32)]
    model, history = small_jbu(backbone, images, 1, downsampler="simple")
    assert len(history) == 1 and isinstance(model, JBUStack)


def test_bad_arguments_raise_with_a_fix(backbone, images):
    with pytest.raises(ValueError, match="multiple of the backbone's stride"):
        train_jbu(backbone, images, 1, image_size=30, progress=False)
    with pytest.raises(ValueError, match="unknown downsampler"):
        train_jbu(backbone, images, 1, image_size=SIZE, downsampler="max", progress=False)
    with pytest.raises(ValueError, match="resume=True needs checkpoint"):
        train_jbu(backbone, images, 1, image_size=SIZE, resume=True, progress=False)
    with pytest.raises(ValueError, match="float"):
        train_jbu(backbone, [torch.zeros(3, 32, 32, dtype=torch.uint8)], 1, image_size=SIZE, progress=False)
    with pytest.raises(TypeError, match="normalize"):
        train_jbu(torch.nn.Identity(), images, 1, progress=False)


@pytest.mark.parametrize("dim", [40, 8])
def test_wide_features_train_through_their_projections_with_the_same_values(dim):
    # A 1280-channel head must not upsample all its channels each step: the views' projections (and the
    # saliency's weights) go through the JBU instead (dim 40 > 11 columns); narrow features take the full
    # route (dim 8). With dropout off both give the numbers of upsampling, projecting and pooling directly.
    from torch import nn

    from featup.downsamplers import AttentionDownsampler
    from featup.losses import random_projection
    from featup.training.jbu import _upsampled_views
    from featup.upsamplers import JBUStack

    torch.manual_seed(0)
    views, d = 2, 5
    parts = nn.ModuleDict({"upsampler": JBUStack(dim), "downsampler": AttentionDownsampler(dim, 4, 4)})
    nn.init.normal_(parts["upsampler"].fixup_proj[1].weight, std=0.2)
    for module in parts.modules():
        if isinstance(module, (nn.Dropout, nn.Dropout2d)):
            module.p = 0.0
    features, image = torch.randn(2, dim, 4, 4), torch.rand(2, 3, 16, 16)
    projection = random_projection(2 * views, dim, d, generator=torch.Generator().manual_seed(0))
    unit = torch.tensor(3.0)
    values, saliency = _upsampled_views(parts, features, image, projection, views, unit)
    hr = parts["upsampler"](features, image) / unit
    expected = torch.einsum("bchw,bjcd->bjdhw", hr, projection.view(2, views, dim, d)).flatten(0, 1)
    torch.testing.assert_close(values, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(saliency, parts["downsampler"].saliency_logits(hr).repeat_interleave(views, 0),
                               rtol=1e-4, atol=1e-5)


def _cell_views() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features (2 images), projections (2 views each), views that repeat each cell's value, zero-mean cell texture."""
    torch.manual_seed(0)
    features, projection = torch.randn(2, DIM, 4, 4), torch.randn(4, DIM, 3)
    within = torch.einsum("bchw,bcd->bdhw", features.repeat_interleave(2, 0), projection)
    values = torch.nn.functional.interpolate(within, scale_factor=STRIDE, mode="nearest")
    texture = torch.randn(4, 3, STRIDE, STRIDE)
    texture = (texture - texture.mean((-2, -1), keepdim=True)).repeat(1, 1, 4, 4)  # zero mean in every cell
    return features, projection, values, texture


def test_cell_consistency_is_zero_when_each_cell_keeps_its_average_and_not_when_features_leak():
    from featup.training.jbu import _cell_consistency, _cells_and_targets

    features, projection, values, texture = _cell_views()
    assert _cell_consistency(*_cells_and_targets(values + texture, features, projection, 2)).item() < 1e-10
    leaked = values.roll(STRIDE // 2, dims=-1)
    assert _cell_consistency(*_cells_and_targets(leaked, features, projection, 2)).item() > 0.1


def test_cell_contrast_charges_shrunken_features_but_not_texture_or_a_shift():
    from featup.training.jbu import _cell_contrast, _cells_and_targets

    features, projection, values, texture = _cell_views()
    assert _cell_contrast(*_cells_and_targets(values + texture + 5.0, features, projection, 2)).item() < 1e-10
    # what a CRF-trained JBU did: each map kept its shape (cosine 0.95) at half the backbone's contrast
    shrunk = _cell_contrast(*_cells_and_targets(0.5 * values, features, projection, 2)).item()
    assert shrunk == pytest.approx(torch.tensor(0.5).log().square().item(), rel=1e-4)
