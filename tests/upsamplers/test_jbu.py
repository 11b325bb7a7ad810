"""featup.upsamplers.jbu: the JBU layer's kernel and the stack's any-size output.

Parity with the published FeatUp forward is checked in tests/test_checkpoints.py, on weights imported
from the published checkpoint layout.
"""

import math

import pytest
import torch

from featup.upsamplers import JBULayer, JBUStack


def inputs(batch=2, dim=6, grid=(4, 5), image=(32, 40), seed=0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, dim, *grid, generator=generator).to(dtype)
    return features, torch.rand(batch, 3, *image, generator=generator).to(dtype)


def randomised(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Move every parameter off its init, so no test passes because a weight happens to be 0 or 1."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(0.2 * torch.randn(parameter.shape, generator=generator))
    return module


def test_stage_sizes_double_like_the_published_stack():
    assert JBUStack(4).stage_sizes((14, 14), (224, 224)) == [(28, 28), (56, 56), (112, 112), (224, 224)]


@pytest.mark.parametrize(
    ("grid", "output"),
    [
        ((16, 16), (224, 224)),
        ((7, 7), (224, 224)),
        ((10, 14), (160, 224)),
        ((14, 14), (20, 20)),
        ((14, 14), (448, 300)),
    ],
)
def test_stage_sizes_grow_geometrically_to_the_exact_output(grid, output):
    sizes = JBUStack(4).stage_sizes(grid, output)
    assert len(sizes) == 4 and sizes[-1] == output
    for axis in (0, 1):
        factor = (output[axis] / grid[axis]) ** 0.25
        for k, size in enumerate(sizes, start=1):
            assert abs(size[axis] - grid[axis] * factor**k) <= 0.5 + 1e-9


@pytest.mark.parametrize(
    ("grid", "image", "output_size", "expected"),
    [
        ((14, 14), (224, 224), None, (224, 224)),  # ViT-S/16
        ((16, 16), (224, 224), None, (224, 224)),  # DINOv2-14: the published stack would give 256
        ((7, 7), (224, 224), None, (224, 224)),  # stride-32 ResNet
        ((6, 8), (96, 128), None, (96, 128)),  # non-square
        ((14, 14), (224, 224), 20, (20, 20)),  # less than 2× the grid
        ((7, 9), (56, 72), (40, 100), (40, 100)),  # non-square, larger than the image in one axis
    ],
)
def test_output_size(grid, image, output_size, expected):
    features, image01 = inputs(batch=1, dim=5, grid=grid, image=image)
    model = JBUStack(5).eval()
    with torch.no_grad():
        out = model(features, image01, output_size)
    assert out.shape == (1, 5, *expected)
    assert torch.isfinite(out).all()


def test_eval_is_deterministic_and_train_uses_dropout():
    features, image = inputs()
    model = randomised(JBUStack(6))
    with torch.no_grad():
        model.eval()
        assert torch.equal(model(features, image), model(features, image))
        model.train()
        torch.manual_seed(0)
        first = model(features, image)
        assert not torch.equal(first, model(features, image))


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float64, 1e-5), (torch.bfloat16, 5e-2)])
def test_other_dtypes_agree_with_float32(dtype, tolerance):
    features, image = inputs()
    model = randomised(JBUStack(6)).eval()
    with torch.no_grad():
        reference = model(features, image)
        out = model.to(dtype)(features.to(dtype), image)
    assert out.dtype == dtype
    relative_error = (out.double() - reference.double()).norm() / reference.double().norm()
    assert relative_error < tolerance


def test_every_parameter_learns():
    features, image = inputs()
    model = randomised(JBUStack(6)).eval()
    model(features, image).square().mean().backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_wrong_channels_rejected():
    features, image = inputs(dim=5)
    with pytest.raises(ValueError, match="got features with 5 channels, expected 6"):
        JBUStack(6)(features, image)


def test_too_small_output_rejected():
    features, image = inputs()
    with pytest.raises(ValueError, match="expected both sides larger than the JBU radius 3"):
        JBUStack(6)(features, image, (3, 16))


def test_layer_filters_are_normalised_before_the_fixup():
    layer = randomised(JBULayer()).eval()
    with torch.no_grad():
        layer.fixup_proj[3].weight.zero_()
        layer.fixup_proj[3].bias.zero_()
    _, guidance = inputs(image=(12, 10))
    filters = layer.filters(guidance)
    assert filters.shape == (2, 49, 12, 10)
    torch.testing.assert_close(filters.sum(1), torch.ones(2, 12, 10))
    # Normalised filters reproduce a constant source exactly, whatever the guidance.
    out = layer(torch.full((2, 4, 3, 5), 2.5), guidance)
    torch.testing.assert_close(out, torch.full((2, 4, 12, 10), 2.5))


def test_layer_spatial_kernel_is_a_gaussian_of_the_tap_offsets():
    layer = JBULayer(radius=2)
    with torch.no_grad():
        layer.sigma_spatial.fill_(0.5)
    kernel = layer.spatial_kernel().reshape(5, 5)
    offsets = [-1.0, -0.5, 0.0, 0.5, 1.0]
    expected = torch.tensor([[math.exp(-(dy * dy + dx * dx) / 0.5) for dx in offsets] for dy in offsets])
    torch.testing.assert_close(kernel, expected)


def _stack_with_fixup(dim):
    torch.manual_seed(0)
    stack = JBUStack(dim).double()
    torch.nn.init.normal_(stack.fixup_proj[1].weight, std=0.2)  # a trained fixup, not the near-zero init
    torch.nn.init.normal_(stack.fixup_proj[1].bias)
    features = torch.randn(2, dim, 5, 6, dtype=torch.double)
    image = torch.rand(2, 3, 37, 45, dtype=torch.double)
    projection = torch.randn(2, dim, 7, dtype=torch.double)
    return stack, features, image, projection


def test_projected_forward_equals_projecting_the_output_with_its_gradients():
    stack, features, image, projection = _stack_with_fixup(40)
    stack.eval()
    full = torch.einsum("bchw,bcd->bdhw", stack(features, image, (37, 45)), projection)
    full.square().sum().backward()
    expected = {n: p.grad.clone() for n, p in stack.named_parameters()}
    stack.zero_grad()
    projected = stack.forward_projected(features, image, projection, (37, 45))
    projected.square().sum().backward()
    torch.testing.assert_close(projected, full, rtol=1e-10, atol=1e-10)
    for name, param in stack.named_parameters():
        torch.testing.assert_close(param.grad, expected[name], rtol=1e-8, atol=1e-10, msg=name)


def test_projected_forward_folds_the_fixup_dropout_exactly_in_train_mode():
    stack, features, image, projection = _stack_with_fixup(40)
    stack.train()
    torch.manual_seed(3)
    projected = stack.forward_projected(features, image, projection)
    # The same draws by hand: the fixup's channel mask first, then the layers' own dropout.
    torch.manual_seed(3)
    keep = torch.bernoulli(torch.full((2, 40, 1), 0.8))[..., None] / 0.8
    out = stack._run_layers(features, image, None)
    fixup = stack.fixup_proj[1]
    full = out + 0.1 * fixup(out * keep)
    torch.testing.assert_close(projected, torch.einsum("bchw,bcd->bdhw", full, projection), rtol=1e-10, atol=1e-10)


def test_projected_forward_rejects_a_projection_of_other_channels():
    stack, features, image, projection = _stack_with_fixup(40)
    with pytest.raises(ValueError, match="B×40×D projection"):
        stack.forward_projected(features, image, projection[:, :30])


def test_fixup_on_the_low_res_grid_equals_the_published_full_res_fixup():
    stack = randomised(JBUStack(6)).double().eval()
    features, image = inputs(dtype=torch.float64)
    out = stack._run_layers(features, image, None)
    torch.testing.assert_close(stack(features, image), out + 0.1 * stack.fixup_proj(out))


def test_distance_kernel_is_a_gaussian_of_key_distances():
    layer = randomised(JBULayer(range_kernel="distance", radius=1)).double().eval()
    guidance = torch.rand(1, 3, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    q = layer.range_proj(guidance)
    keys = torch.nn.functional.pad(q, [1] * 4, mode="reflect")
    distance = torch.stack([(keys[:, :, i:i + 5, j:j + 6] - q).square().sum(1) for i in range(3) for j in range(3)], 1)
    expected = torch.softmax(-layer.range_temp.exp() * distance / 2, 1)
    torch.testing.assert_close(layer.range_kernel(guidance), expected)


def test_bilateral_init_is_the_classical_joint_bilateral_upsampler():
    from featup.upsamplers import JointBilateral

    stack = JBUStack(6, range_kernel="distance").double()
    stack.init_bilateral(colour_sigma=0.1, spatial_sigma=0.5)
    features, image = inputs(dtype=torch.float64)
    expected = JointBilateral(colour_sigma=0.1, spatial_sigma=0.5).double()(features, image)
    torch.testing.assert_close(stack.eval()(features, image), expected, rtol=1e-5, atol=1e-5)


def test_bilateral_init_needs_the_distance_kernel():
    with pytest.raises(ValueError, match="range_kernel='distance'"):
        JBUStack(6).init_bilateral()


def test_range_entropy_is_log_taps_for_a_uniform_kernel_and_lower_at_edges():
    stack = JBUStack(6, range_kernel="distance")
    stack.init_bilateral()
    image = torch.zeros(1, 3, 32, 32)
    image[..., 16:] = 1.0
    entropies = stack.range_entropy(image, (4, 4))
    assert len(entropies) == 4 and all(e < math.log(49) - 0.05 for e in entropies)
    flat = JBUStack(6, range_kernel="distance")
    for layer in flat.layers:
        torch.nn.init.zeros_(layer.range_proj[-1].weight)
        torch.nn.init.zeros_(layer.range_proj[-1].bias)
    assert flat.range_entropy(image, (4, 4)) == pytest.approx([math.log(49)] * 4, abs=1e-5)


@pytest.mark.parametrize("range_kernel", ["dot", "distance"])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_inference_forward_equals_the_differentiable_forward(range_kernel, train):
    # Without autograd the layers run fused (featup.ops.jbu_layer, where the kernels are built); with it they are
    # composed from differentiable ops. Same seed, same dropout draws, same output.
    stack = randomised(JBUStack(6, range_kernel=range_kernel)).train(train)
    features, image = inputs(grid=(5, 6), image=(37, 45))
    torch.manual_seed(0)
    with torch.no_grad():
        inference = stack(features, image)
    torch.manual_seed(0)
    differentiable = stack(features, image)
    assert differentiable.requires_grad
    torch.testing.assert_close(inference, differentiable.detach(), rtol=1e-4, atol=1e-4)


@torch.no_grad()
def pooled_error(stack, features, image):
    pooled = torch.nn.functional.adaptive_avg_pool2d(stack(features, image), features.shape[-2:])
    return float((pooled - features).square().mean() / features.square().mean())


def test_back_projection_brings_the_pooled_output_back_towards_the_features():
    # A trained-like stack (bilateral, weights moved a little): white-noise features lose a third of their energy
    # when upsampled and pooled back; a full step wins half of that error back, a half step less.
    features, image = inputs(dtype=torch.float64, grid=(6, 7), image=(48, 56))
    errors = []
    for step in (0.0, 0.5, 1.0):
        stack = JBUStack(6, range_kernel="distance", back_projection=step).double()
        stack.init_bilateral()
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for parameter in stack.parameters():
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
        errors.append(pooled_error(stack.eval(), features, image))
    assert errors[0] > 0.2, errors
    assert errors[2] < 0.8 * errors[1] and errors[1] < 0.8 * errors[0] and errors[2] < 0.5 * errors[0], errors


def test_back_projection_is_one_more_pass_on_the_corrected_features():
    narrow = randomised(JBUStack(6, range_kernel="distance", back_projection=0.5)).double().eval()
    features, image = inputs(dtype=torch.float64)
    pooled = torch.nn.functional.adaptive_avg_pool2d(narrow._upsample(features, image, None), features.shape[-2:])
    expected = narrow._upsample(features + 0.5 * (features - pooled), image, None)
    torch.testing.assert_close(narrow(features, image), expected)


def test_pooling_through_the_cells_equals_pooling_the_output():
    # 32 channels on a 4×5 grid: the pooled pass runs the layers on the 20 cells' indicator maps.
    wide = randomised(JBUStack(32, range_kernel="distance", back_projection=1.0)).double().eval()
    features, image = inputs(dim=32, dtype=torch.float64)
    plain = torch.nn.functional.adaptive_avg_pool2d(wide._upsample(features, image, None), features.shape[-2:])
    torch.testing.assert_close(wide._pooled(features, image, None), plain)


def test_back_projection_is_refused_in_training_and_out_of_range():
    stack = JBUStack(6, back_projection=1.0)
    features, image = inputs()
    with pytest.raises(ValueError, match="back_projection=1.0, set it to 0 while training"):
        stack.forward_projected(features, image, torch.randn(2, 6, 3))
    for step in (-0.5, 2.0):
        with pytest.raises(ValueError, match=f"back_projection={step}, expected a step between 0"):
            JBUStack(6, back_projection=step)
