import pytest
import torch
import torch.nn.functional as F

from featup.downsamplers import AttentionDownsampler, SimpleDownsampler, gaussian_blur


def reference_attention(d: AttentionDownsampler, hr: torch.Tensor, size: tuple[int, int],
                        blurred: bool = False) -> torch.Tensor:
    """The published formulation: unfold blurred windows with their channels, attend, sum."""
    b, c = hr.shape[:2]
    k = d.kernel_size
    x = hr if blurred else gaussian_blur(hr)
    patches = F.unfold(x, k, stride=d.stride).reshape(b, c, k * k, *size).permute(0, 3, 4, 2, 1)
    logits = d.saliency(patches).squeeze(-1)
    attention = torch.softmax(logits * d.w.flatten() + d.b.flatten(), -1)
    return torch.einsum("bhwpc,bhwp->bchw", patches, attention)


@pytest.mark.parametrize("kernel_size,stride,size", [(29, 15, (4, 3)), (8, 8, (3, 5)), (7, 3, (5, 9)), (5, 6, (2, 2))])
def test_attention_matches_unfolded_reference(kernel_size, stride, size):
    torch.manual_seed(0)
    d = AttentionDownsampler(6, kernel_size, stride).double().eval()
    hr = torch.randn(2, 6, stride * (size[0] - 1) + kernel_size, stride * (size[1] - 1) + kernel_size,
                     dtype=torch.float64)
    torch.testing.assert_close(d(hr, size), reference_attention(d, hr, size), atol=1e-12, rtol=0)


@pytest.mark.parametrize("stride,padding,size", [(16, 0, (14, 14)), (16, 4, (3, 4)), (6, 2, (5, 3)), (3, 1, (2, 2))])
def test_attention_matches_unfolded_reference_at_patch_strides_and_with_padding(stride, padding, size):
    # The blur is applied to the window weights, not the features: the borders (reflected) must still agree.
    torch.manual_seed(0)
    kernel_size = stride + 2 * padding
    d = AttentionDownsampler(5, kernel_size, stride, padding=padding).double().eval()
    hr = torch.randn(2, 5, stride * (size[0] - 1) + kernel_size - 2 * padding,
                     stride * (size[1] - 1) + kernel_size - 2 * padding, dtype=torch.float64)
    padded = F.pad(gaussian_blur(hr), [padding] * 4, mode="reflect")
    torch.testing.assert_close(d(hr, size), reference_attention(d, padded, size, blurred=True), atol=1e-12, rtol=0)


def test_attention_with_precomputed_saliency_pools_a_projection_exactly():
    torch.manual_seed(1)
    d = AttentionDownsampler(8, 6, 4).double().eval()
    hr = torch.randn(2, 8, 22, 26, dtype=torch.float64)
    proj = torch.randn(8, 3, dtype=torch.float64)
    full = torch.einsum("bchw,cd->bdhw", d(hr, (5, 6)), proj)
    fast = d(torch.einsum("bchw,cd->bdhw", hr, proj), (5, 6), saliency=d.saliency_logits(hr))
    torch.testing.assert_close(fast, full, atol=1e-12, rtol=0)


def test_eval_mode_is_deterministic_and_training_mode_drops_out():
    d = AttentionDownsampler(16, 4, 4)
    hr = torch.randn(1, 16, 16, 16)
    d.eval()
    torch.testing.assert_close(d(hr, (4, 4)), d(hr, (4, 4)), atol=0, rtol=0)
    d.train()
    assert not torch.equal(d(hr, (4, 4)), d(hr, (4, 4)))


def test_simple_downsampler_starts_as_average_pooling():
    d = SimpleDownsampler(4, 4)
    hr = torch.randn(2, 3, 16, 20)
    torch.testing.assert_close(d(hr, (4, 5)), F.avg_pool2d(hr, 4))


def test_constant_features_stay_constant():
    hr = torch.full((1, 5, 30, 30), 2.5)
    for d in (SimpleDownsampler(7, 3), AttentionDownsampler(5, 7, 3).eval()):
        torch.testing.assert_close(d(hr, (8, 8)), torch.full((1, 5, 8, 8), 2.5))


@pytest.mark.parametrize("make", [lambda: SimpleDownsampler(5, 4), lambda: AttentionDownsampler(3, 5, 4)])
def test_any_input_size_maps_to_the_requested_grid(make):
    d = make().eval()
    out = d(torch.randn(2, 3, 50, 73), (7, 11))
    assert out.shape == (2, 3, 7, 11)
    assert torch.isfinite(out).all()


def test_follows_module_dtype_and_trains():
    d = AttentionDownsampler(4, 5, 3).double()
    hr = torch.randn(1, 4, 17, 17, dtype=torch.float64, requires_grad=True)
    out = d(hr, (5, 5))
    assert out.dtype == torch.float64
    out.square().mean().backward()
    assert hr.grad is not None and d.w.grad is not None and d.saliency.weight.grad is not None


def test_gaussian_blur_is_normalised_and_smooths():
    x = torch.zeros(1, 1, 9, 9)
    x[0, 0, 4, 4] = 1
    y = gaussian_blur(x)
    assert y.sum().item() == pytest.approx(1.0)
    assert y[0, 0, 4, 4] < 0.2 and y[0, 0, 4, 3] == pytest.approx(y[0, 0, 3, 4].item())


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="channels"):
        AttentionDownsampler(4, 3, 3)(torch.randn(1, 5, 9, 9), (3, 3))
    with pytest.raises(ValueError, match="output_size"):
        SimpleDownsampler(3, 3)(torch.randn(1, 5, 9, 9), (0, 3))
    with pytest.raises(ValueError, match="kernel_size"):
        SimpleDownsampler(0, 3)
    with pytest.raises(ValueError, match="padding"):
        AttentionDownsampler(4, 6, 4, padding=3)


def test_bfloat16_features_pool_close_to_float32():
    torch.manual_seed(0)
    d = AttentionDownsampler(6, 7, 3).eval()
    x = torch.randn(2, 6, 25, 25)
    reference = d(x, (7, 7))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = d(x, (7, 7))
    assert mixed.dtype == torch.bfloat16
    torch.testing.assert_close(mixed.float(), reference, atol=0.02, rtol=0)


def test_padded_windows_match_unfolding_the_padded_blurred_map():
    torch.manual_seed(2)
    d = AttentionDownsampler(3, 8, 4, padding=2).double().eval()
    hr = torch.randn(1, 3, 16, 12, dtype=torch.float64)
    padded = F.pad(gaussian_blur(hr), [2] * 4, mode="reflect")  # windows of 8 centred on 4×4 patches
    torch.testing.assert_close(d(hr, (4, 3)), reference_attention(d, padded, (4, 3), blurred=True),
                               atol=1e-12, rtol=0)
