"""featup.ops.jbu_layer: the padded bicubic kernel and the fused JBU layer against PyTorch's composition of them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import featup.upsamplers.jbu as jbu_module
from featup.ops import jbu_layer
from featup.ops._extension import compiled_unavailable_reason
from featup.upsamplers import JBULayer

needs_kernels = pytest.mark.skipif(compiled_unavailable_reason("cpu") is not None,
                                   reason="the compiled CPU kernels did not build")


def interpolate_then_pad(source: torch.Tensor, size: tuple[int, int], radius: int) -> torch.Tensor:
    return F.pad(F.interpolate(source, size=size, mode="bicubic", align_corners=False), [radius] * 4, mode="reflect")


# (h, w) → (H, W) with radius: the JBU's 2× steps, odd factors, non-square, a downscale on one axis, no padding.
RESIZES = [((14, 14), (28, 28), 3), ((5, 7), (12, 10), 3), ((4, 5), (9, 30), 1), ((20, 9), (13, 8), 2),
           ((7, 7), (23, 31), 4), ((6, 6), (6, 6), 0)]


@needs_kernels
@pytest.mark.parametrize(("source_size", "size", "radius"), RESIZES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bicubic_pad_matches_interpolate_then_pad(source_size, size, radius, dtype):
    g = torch.Generator().manual_seed(0)
    source = torch.randn(2, 3, *source_size, generator=g, dtype=dtype, requires_grad=True)
    grad = torch.randn(2, 3, size[0] + 2 * radius, size[1] + 2 * radius, generator=g, dtype=dtype)
    got = jbu_layer.bicubic_pad(source, size, radius)
    # The compiled op, not the fallback, produced it: its autograd node is the registered one.
    assert "featup_bicubic_pad_forward" in got.grad_fn.name()
    want = interpolate_then_pad(source, size, radius)
    tolerance = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-12}
    torch.testing.assert_close(got, want, **tolerance)
    got_grad, = torch.autograd.grad(got, source, grad)
    want_grad, = torch.autograd.grad(want, source, grad)
    torch.testing.assert_close(got_grad, want_grad, **tolerance)


@needs_kernels
def test_bicubic_pad_gradcheck_and_opcheck():
    source = torch.randn(1, 2, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1),
                         requires_grad=True)
    assert torch.autograd.gradcheck(lambda s: jbu_layer.bicubic_pad(s, (9, 7), 2), (source,))
    torch.library.opcheck(torch.ops.featup.bicubic_pad_forward.default, (source, 9, 7, 2))


def test_bicubic_pad_torch_backend_and_half_precision_fall_back():
    source = torch.randn(1, 2, 5, 6)
    want = interpolate_then_pad(source, (11, 13), 3)
    assert torch.equal(jbu_layer.bicubic_pad(source, (11, 13), 3, backend="torch"), want)
    half = source.bfloat16()
    assert torch.equal(jbu_layer.bicubic_pad(half, (11, 13), 3), interpolate_then_pad(half, (11, 13), 3))


@needs_kernels
def test_bicubic_pad_rejects_padding_beyond_the_image():
    with pytest.raises(RuntimeError, match="expected both sides larger than pad"):
        torch.ops.featup.bicubic_pad_forward(torch.zeros(1, 1, 3, 3), 4, 9, 4)


def randomised_layer(range_kernel: str, radius: int, dtype: torch.dtype, seed: int = 0) -> JBULayer:
    """A layer with every weight moved off its init (the fixup's last conv starts near zero)."""
    layer = JBULayer(radius=radius, range_kernel=range_kernel).to(dtype)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.add_(0.3 * torch.randn(parameter.shape, generator=g, dtype=dtype))
    return layer


def fused_and_composed(layer: JBULayer, source: torch.Tensor, guidance: torch.Tensor, monkeypatch) -> tuple:
    """The layer's output without autograd (the fused op, counted) and with it (composed), at one seed."""
    calls = []

    def spy(*args):
        calls.append(args)
        return jbu_layer.jbu_layer_forward(*args)

    monkeypatch.setattr(jbu_module, "jbu_layer_forward", spy)
    torch.manual_seed(5)
    with torch.no_grad():
        fused = layer(source, guidance)
    assert len(calls) == 1, "the no-grad forward did not take the fused op"
    torch.manual_seed(5)
    composed = layer(source, guidance)
    assert composed.requires_grad and len(calls) == 1, "the differentiable forward took the fused op"
    return fused, composed.detach()


@needs_kernels
@pytest.mark.parametrize("range_kernel", ["dot", "distance"])
@pytest.mark.parametrize("radius", [1, 2, 3, 4])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_layer_equals_the_composed_layer(range_kernel, radius, train, dtype, monkeypatch):
    # Widths below, at and above the 16-pixel tile; train mode draws both Dropout2d masks in the same order.
    layer = randomised_layer(range_kernel, radius, dtype).train(train)
    g = torch.Generator().manual_seed(radius)
    for size in [(radius + 2, 9), (17, 16), (12, 37)]:
        source = torch.randn(2, 5, 4, 6, generator=g, dtype=dtype)
        guidance = torch.randn(2, 3, *size, generator=g, dtype=dtype)
        fused, composed = fused_and_composed(layer, source, guidance, monkeypatch)
        # float32: the kernel's exp and erf approximations and its summation order, on outputs of magnitude ~1.
        tolerance = {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 1e-11, "atol": 1e-11}
        torch.testing.assert_close(fused, composed, **tolerance)


@needs_kernels
def test_fused_layer_matches_in_train_mode_only_with_the_same_masks(monkeypatch):
    # The equality above is not vacuous in train mode: other draws give other outputs.
    layer = randomised_layer("distance", 3, torch.float32).train()
    source, guidance = torch.randn(1, 4, 5, 5), torch.randn(1, 3, 20, 20)
    with torch.no_grad():
        torch.manual_seed(1)
        first = layer(source, guidance)
        torch.manual_seed(2)
        second = layer(source, guidance)
    assert not torch.allclose(first, second)


def test_fused_layer_is_not_used_where_it_does_not_apply():
    assert not jbu_layer.fused_layer_available(torch.zeros(1, dtype=torch.bfloat16), 3)
    assert not jbu_layer.fused_layer_available(torch.zeros(1), 3, backend="torch")
    assert not jbu_layer.fused_layer_available(torch.zeros(1), 5)  # 11×11: no compiled window


def test_uncompiled_radius_and_dtype_fall_back_to_the_composed_layer():
    layer = randomised_layer("dot", 5, torch.float32).eval()
    source, guidance = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 14, 15)
    with torch.no_grad():
        out = layer(source, guidance)
    assert out.shape == (1, 3, 14, 15)
    torch.testing.assert_close(out, layer(source, guidance).detach())
    half = randomised_layer("dot", 3, torch.bfloat16).eval()
    with torch.no_grad():
        assert half(source.bfloat16(), guidance.bfloat16()).dtype == torch.bfloat16


@needs_kernels
def test_fused_layer_does_not_depend_on_thread_count():
    layer = randomised_layer("distance", 3, torch.float32).eval()
    source, guidance = torch.randn(2, 6, 7, 9), torch.randn(2, 3, 23, 35)
    threads = torch.get_num_threads()
    try:
        with torch.no_grad():
            torch.set_num_threads(1)
            serial = layer(source, guidance)
            torch.set_num_threads(max(2, threads))
            parallel = layer(source, guidance)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(serial, parallel)


@needs_kernels
def test_fused_op_rejects_bad_shapes():
    b, q, h, w, d = 1, 4, 6, 7, 3
    args = [torch.zeros(b, 2, h + d - 1, w + d - 1), torch.zeros(b, q, h, w), torch.zeros(b, q, h + d - 1, w + d - 1),
            torch.zeros(b, 3, h, w), torch.zeros(d * d), 1.0, torch.zeros(9, 12), torch.zeros(9), torch.zeros(9, 9),
            torch.zeros(9), torch.ones(b, 9)]
    assert torch.ops.featup.jbu_layer_forward(*args).shape == (b, 2, h, w)
    bad_keys = [*args[:2], torch.zeros(b, q, h, w), *args[3:]]
    with pytest.raises(RuntimeError, match="got keys_padded of shape"):
        torch.ops.featup.jbu_layer_forward(*bad_keys)
    bad_w1 = [*args[:6], torch.zeros(9, 9), *args[7:]]
    with pytest.raises(RuntimeError, match="got w1 of shape"):
        torch.ops.featup.jbu_layer_forward(*bad_w1)
    with pytest.raises(RuntimeError, match="expected float32 or float64"):
        torch.ops.featup.jbu_layer_forward(*[a if isinstance(a, float) else a.bfloat16() for a in args])
