"""featup.ops.adaptive_conv: the pure-PyTorch path against an unfold reference, its gradients, and the dispatch."""

from __future__ import annotations

import importlib
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

from featup.ops import BACKEND_ENV_VAR, adaptive_conv

_module = importlib.import_module("featup.ops.adaptive_conv")
_extension = importlib.import_module("featup.ops._extension")


def unfold_reference(x_padded: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """The slow, memory-hungry definition: unfold every d×d neighbourhood, weight it, sum."""
    batch, height, width, d, _ = filters.shape
    channels = x_padded.shape[1]
    neighbourhoods = F.unfold(x_padded, d).reshape(batch, channels, d * d, height, width)
    return torch.einsum("bcphw,bhwp->bchw", neighbourhoods, filters.reshape(batch, height, width, d * d))


def random_inputs(batch=2, channels=37, height=9, width=13, d=5, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, height + d - 1, width + d - 1, generator=generator, dtype=dtype)
    # Uniform in [0.5, 1.5] with random signs: every tap carries weight, so a dropped tap shows.
    magnitude = torch.rand(batch, height, width, d, d, generator=generator, dtype=dtype) + 0.5
    signs = torch.randint(0, 2, magnitude.shape, generator=generator).to(dtype) * 2 - 1
    return x, magnitude * signs


@pytest.mark.parametrize("d", [1, 3, 7])
def test_matches_unfold_reference(d):
    x, filters = random_inputs(d=d)
    out = adaptive_conv(x, filters, backend="torch")
    assert out.shape == (2, 37, 9, 13)
    torch.testing.assert_close(out, unfold_reference(x, filters), rtol=1e-5, atol=1e-5)


def test_tap_order_is_row_then_column():
    x, _ = random_inputs(batch=1, channels=2, height=4, width=6, d=3)
    filters = torch.zeros(1, 4, 6, 3, 3)
    filters[..., 0, 2] = 1.0  # row offset 0, column offset 2
    out = adaptive_conv(x, filters, backend="torch")
    torch.testing.assert_close(out, x[:, :, 0:4, 2:8])


def test_gradients_match_reference():
    x, filters = random_inputs(dtype=torch.float64)
    x.requires_grad_(True)
    filters.requires_grad_(True)
    grad_out = torch.randn(2, 37, 9, 13, dtype=torch.float64)
    ours = torch.autograd.grad(adaptive_conv(x, filters, backend="torch"), (x, filters), grad_out)
    reference = torch.autograd.grad(unfold_reference(x, filters), (x, filters), grad_out)
    for got, expected in zip(ours, reference, strict=True):
        torch.testing.assert_close(got, expected)


def test_gradcheck_both_inputs():
    x, filters = random_inputs(batch=2, channels=3, height=3, width=4, d=3, dtype=torch.float64)
    x.requires_grad_(True)
    filters.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, k: adaptive_conv(a, k, backend="torch"), (x, filters))
    assert torch.autograd.gradgradcheck(lambda a, k: adaptive_conv(a, k, backend="torch"), (x, filters), fast_mode=True)


def test_gradient_of_one_input_only():
    x, filters = random_inputs(dtype=torch.float64)
    filters.requires_grad_(True)
    (grad_filters,) = torch.autograd.grad(adaptive_conv(x, filters, backend="torch").sum(), filters)
    (expected,) = torch.autograd.grad(unfold_reference(x, filters).sum(), filters)
    torch.testing.assert_close(grad_filters, expected)


@pytest.mark.parametrize(("dtype", "rtol"), [(torch.float16, 1e-3), (torch.bfloat16, 8e-3)])
def test_reduced_precision_accumulates_in_float32(dtype, rtol):
    # Inputs rounded once to the low dtype; the only further error allowed is rounding the result
    # (half an ulp), which fp16/bf16 accumulation over 25 taps and 37 channels would exceed.
    x, filters = random_inputs(dtype=torch.float32, d=5)
    x, filters = x.to(dtype).requires_grad_(True), filters.to(dtype).requires_grad_(True)
    x32, filters32 = x.detach().float().requires_grad_(True), filters.detach().float().requires_grad_(True)
    out = adaptive_conv(x, filters, backend="torch")
    out32 = adaptive_conv(x32, filters32, backend="torch")
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), out32, rtol=rtol, atol=1e-6)

    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    grads = torch.autograd.grad(out, (x, filters), grad_out)
    grads32 = torch.autograd.grad(out32, (x32, filters32), grad_out.float())
    for got, expected in zip(grads, grads32, strict=True):
        assert got.dtype == dtype
        torch.testing.assert_close(got.float(), expected, rtol=rtol, atol=1e-6)


def test_non_contiguous_inputs():
    x, filters = random_inputs()
    x_strided = x.permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2)
    filters_strided = filters.permute(0, 1, 2, 4, 3).contiguous().permute(0, 1, 2, 4, 3)
    x_channels_last = x.contiguous(memory_format=torch.channels_last)
    assert not x_strided.is_contiguous() and not filters_strided.is_contiguous()
    expected = adaptive_conv(x, filters, backend="torch")
    torch.testing.assert_close(adaptive_conv(x_strided, filters_strided, backend="torch"), expected)
    torch.testing.assert_close(adaptive_conv(x_channels_last, filters, backend="torch"), expected)


def test_empty_batch():
    x = torch.randn(0, 4, 8, 9, requires_grad=True)
    filters = torch.randn(0, 6, 7, 3, 3, requires_grad=True)
    out = adaptive_conv(x, filters, backend="torch")
    assert out.shape == (0, 4, 6, 7)
    out.sum().backward()
    assert x.grad.shape == x.shape and filters.grad.shape == filters.shape


@pytest.mark.parametrize(
    ("x_shape", "filters_shape", "message"),
    [
        ((2, 4, 10, 10), (2, 8, 8, 3), "expected 5 dimensions"),
        ((4, 10, 10), (2, 8, 8, 3, 3), "expected 4 dimensions"),
        ((2, 4, 10, 10), (2, 8, 8, 3, 5), "square taps"),
        ((2, 4, 11, 11), (2, 8, 8, 4, 4), "d odd"),
        ((2, 4, 10, 10), (3, 8, 8, 3, 3), r"expected \(3, 4, 10, 10\)"),
        ((2, 4, 8, 8), (2, 8, 8, 3, 3), r"expected \(2, 4, 10, 10\)"),
    ],
)
def test_bad_shapes_rejected(x_shape, filters_shape, message):
    with pytest.raises(ValueError, match=f"got .*{message}"):
        adaptive_conv(torch.zeros(x_shape), torch.zeros(filters_shape), backend="torch")


def test_mismatched_dtypes_rejected():
    with pytest.raises(ValueError, match="got x_padded of dtype torch.float32 and filters of dtype torch.float64"):
        adaptive_conv(torch.zeros(1, 2, 5, 5), torch.zeros(1, 3, 3, 3, 3, dtype=torch.float64), backend="torch")


def test_integer_inputs_rejected():
    with pytest.raises(ValueError, match="expected one floating-point dtype"):
        adaptive_conv(torch.zeros(1, 2, 5, 5, dtype=torch.long), torch.zeros(1, 3, 3, 3, 3, dtype=torch.long))


@pytest.fixture
def fresh_dispatch(monkeypatch):
    """A clean warn-once memory, no backend chosen through the environment, no real build attempted."""
    monkeypatch.setattr(_module, "_warned_devices", set())
    monkeypatch.delenv(BACKEND_ENV_VAR, raising=False)
    monkeypatch.setattr(_extension, "compiled_unavailable_reason", lambda device_type: "no compiler in this test")
    return monkeypatch


def test_torch_backend_never_touches_extension(fresh_dispatch):
    def fail(device_type):
        raise AssertionError("the extension was consulted")

    fresh_dispatch.setattr(_extension, "compiled_adaptive_conv", fail)
    x, filters = random_inputs()
    adaptive_conv(x, filters, backend="torch")
    fresh_dispatch.setenv(BACKEND_ENV_VAR, "torch")
    adaptive_conv(x, filters)


def test_auto_uses_compiled_kernel_when_available(fresh_dispatch):
    seen = []

    def compiled(x_padded, filters):
        return unfold_reference(x_padded, filters) + 1.0

    def lookup(device_type):
        seen.append(device_type)
        return compiled

    fresh_dispatch.setattr(_extension, "compiled_adaptive_conv", lookup)
    x, filters = random_inputs()
    out = adaptive_conv(x, filters)
    assert seen == ["cpu"]
    torch.testing.assert_close(out, unfold_reference(x, filters) + 1.0)


def test_auto_falls_back_and_warns_once(fresh_dispatch):
    fresh_dispatch.setattr(_extension, "compiled_adaptive_conv", lambda device_type: None)
    x, filters = random_inputs()
    expected = rf"kernel for device 'cpu' \(no compiler in this test\).*pip install \./kernels.*{BACKEND_ENV_VAR}=torch"
    with pytest.warns(RuntimeWarning, match=expected):
        out = adaptive_conv(x, filters)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        adaptive_conv(x, filters, backend="auto")
    torch.testing.assert_close(out, unfold_reference(x, filters), rtol=1e-5, atol=1e-5)


def test_compiled_backend_raises_when_unavailable(fresh_dispatch):
    fresh_dispatch.setattr(_extension, "compiled_adaptive_conv", lambda device_type: None)
    x, filters = random_inputs()
    fresh_dispatch.setenv(BACKEND_ENV_VAR, "compiled")
    with pytest.raises(RuntimeError, match=r"available for device 'cpu' \(no compiler in this test\)"):
        adaptive_conv(x, filters)


def test_unknown_backend_rejected(fresh_dispatch):
    x, filters = random_inputs()
    with pytest.raises(ValueError, match="got backend='cuda', expected one of auto, compiled, torch"):
        adaptive_conv(x, filters, backend="cuda")
    fresh_dispatch.setenv(BACKEND_ENV_VAR, "fast")
    with pytest.raises(ValueError, match=f"got {BACKEND_ENV_VAR}='fast'"):
        adaptive_conv(x, filters)


def test_importing_ops_loads_no_extension():
    code = (
        "import sys, featup.ops; "
        "print('featup.ops._extension' in sys.modules, 'torch.utils.cpp_extension' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]


def test_auto_takes_pure_path_for_windows_the_kernels_lack(fresh_dispatch):
    def compiled(x_padded, filters):
        raise AssertionError("the compiled kernel was given a window it is not instantiated for")

    fresh_dispatch.setattr(_extension, "compiled_adaptive_conv", lambda device_type: compiled)
    x = torch.randn(1, 2, 16, 16, dtype=torch.float64)
    filters = torch.randn(1, 6, 6, 11, 11, dtype=torch.float64)
    torch.testing.assert_close(adaptive_conv(x, filters), unfold_reference(x, filters))
    with pytest.raises(RuntimeError, match=r"windows d in \(1, 3, 5, 7, 9\), got d=11"):
        adaptive_conv(x, filters, backend="compiled")
