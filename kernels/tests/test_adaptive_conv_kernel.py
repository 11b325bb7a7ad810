"""The compiled featup::adaptive_conv ops against a slow float64 unfold reference, on CPU and (when present) CUDA.

The first test to need the kernels JIT-builds them (about a minute on 2 cores; cached afterwards). Without a
GPU, the CUDA kernels still run here under a CPU emulation of CUDA threads (tests/cuda_emulation).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils import cpp_extension

from featup.ops import _extension, adaptive_conv

CUDA = pytest.param(
    "cuda",
    marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")],
)
DEVICES = ["cpu", CUDA]
KERNELS = Path(__file__).resolve().parents[1]

# (B, C, H, W, d): H != W, C not a multiple of 4 or 32, widths below, at and above the CPU's 16-pixel tile
# and the GPU's 32-pixel tile, every supported window.
SHAPES = [
    (2, 5, 7, 19, 3),
    (3, 37, 20, 13, 7),
    (1, 6, 5, 33, 5),
    (2, 4, 17, 16, 7),
    (1, 9, 11, 40, 9),
    (2, 3, 4, 6, 1),
]


def reference(x_padded: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """out[b,c,y,x] = sum_{i,j} filters[b,y,x,i,j] * x_padded[b,c,y+i,x+j], via unfold in float64."""
    batch, channels = x_padded.shape[:2]
    _, height, width, d, _ = filters.shape
    columns = F.unfold(x_padded.double(), d).view(batch, channels, d * d, height, width)
    return torch.einsum("bcphw,bhwp->bchw", columns, filters.double().reshape(batch, height, width, d * d))


def reference_grads(x_padded, filters, grad_out):
    x = x_padded.detach().double().requires_grad_()
    k = filters.detach().double().requires_grad_()
    reference(x, k).backward(grad_out.double())
    return x.grad, k.grad


def random_problem(shape, dtype=torch.float32, device="cpu", seed=0):
    batch, channels, height, width, d = shape
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, channels, height + d - 1, width + d - 1, generator=g, dtype=torch.float64)
    k = torch.randn(batch, height, width, d, d, generator=g, dtype=torch.float64)
    grad = torch.randn(batch, channels, height, width, generator=g, dtype=torch.float64)
    return x.to(device, dtype), k.to(device, dtype), grad.to(device, dtype)


def assert_close_to(actual: torch.Tensor, expected: torch.Tensor, rel: float) -> None:
    """|actual - expected| <= rel * max|expected| everywhere."""
    error = (actual.double().cpu() - expected.double().cpu()).abs().max().item()
    scale = expected.abs().max().item()
    assert error <= rel * scale, f"max error {error:.3g} exceeds {rel:g} x max|expected| = {rel * scale:.3g}"


@pytest.fixture(scope="module")
def ops():
    """The compiled ops, built on first use; a failed CPU build fails the tests rather than skipping them."""
    reason = _extension.compiled_unavailable_reason("cpu")
    assert reason is None, f"the CPU kernels did not build: {reason}"
    return torch.ops.featup


def test_import_does_not_compile(tmp_path):
    code = textwrap.dedent(
        """
        import sys
        import torch
        import featup, featup.ops
        from featup.ops import _extension
        assert _extension._kernels is None, "featup.ops loaded the kernels at import"
        assert "featup_kernels" not in sys.modules
        assert not hasattr(torch.ops.featup, "adaptive_conv_forward"), "the op is registered already"
        """
    )
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext")}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
    assert not (tmp_path / "ext").exists()


def test_missing_sources_give_a_reason_instead_of_an_error(tmp_path):
    code = textwrap.dedent(
        f"""
        from pathlib import Path
        from featup.ops import _extension
        _extension._BUILD_CONFIG = Path({str(tmp_path / "nowhere" / "build_config.py")!r})
        assert _extension.compiled_adaptive_conv("cpu") is None
        print(_extension.compiled_unavailable_reason("cpu"))
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert "No kernel sources at" in result.stdout and "pip install --no-build-isolation ./kernels" in result.stdout


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_forward_and_gradients_match_reference(ops, device, shape):
    x, k, grad = random_problem(shape, device=device)
    assert_close_to(ops.adaptive_conv_forward(x, k), reference(x, k), 1e-5)
    dx, dk = ops.adaptive_conv_backward(grad, x, k)
    ref_dx, ref_dk = reference_grads(x, k, grad)
    assert_close_to(dx, ref_dx, 1e-5)
    assert_close_to(dk, ref_dk, 1e-5)
    # Every tap of the filter gradient carries signal (the published kernel filled 7 of 49).
    assert (dk.abs().flatten(3).amax(dim=(0, 1, 2)) > 0).all()


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_single_gradient_ops_equal_the_halves_of_the_backward(ops, shape, dtype):
    # The CPU-only ops that the range logits' neighbour products use in place of the two-gradient backward.
    x, k, grad = random_problem(shape, dtype=dtype)
    dx, dk = ops.adaptive_conv_backward(grad, x, k)
    assert torch.equal(ops.adaptive_conv_filter_grad(grad, x), dk)
    assert torch.equal(ops.adaptive_conv_input_grad(grad, k), dx)
    torch.library.opcheck(ops.adaptive_conv_filter_grad.default, (grad, x))
    torch.library.opcheck(ops.adaptive_conv_input_grad.default, (grad, k))


def test_single_gradient_ops_reject_bad_shapes(ops):
    x, k, grad = random_problem((1, 2, 4, 4, 3))
    with pytest.raises(RuntimeError, match="square odd window"):
        ops.adaptive_conv_filter_grad(grad, x[..., :-1, :-1])
    with pytest.raises(RuntimeError, match="expected the forward output's shape"):
        ops.adaptive_conv_filter_grad(grad[:, :1], x)
    with pytest.raises(RuntimeError, match="batch sizes differ"):
        ops.adaptive_conv_input_grad(torch.cat([grad, grad]), k)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("dtype", "rel"), [(torch.float16, 2**-9), (torch.bfloat16, 2**-6)])
def test_half_precision_within_rounding(ops, device, dtype, rel):
    # The reference sees the same rounded inputs, so what remains is output rounding (half an ulp: 2^-11 for
    # float16, 2^-8 for bfloat16, relative) plus float32 accumulation.
    x, k, grad = random_problem((2, 21, 9, 35, 7), dtype=dtype, device=device)
    out = ops.adaptive_conv_forward(x, k)
    dx, dk = ops.adaptive_conv_backward(grad, x, k)
    assert out.dtype == dx.dtype == dk.dtype == dtype
    ref_dx, ref_dk = reference_grads(x, k, grad)
    assert_close_to(out, reference(x, k), rel)
    assert_close_to(dx, ref_dx, rel)
    assert_close_to(dk, ref_dk, rel)


@pytest.mark.parametrize("device", DEVICES)
def test_half_precision_accumulates_in_float32(ops, device):
    # dK sums 1000 channels of 0.1: accumulating in float16 (spacing 0.0625 near 100) drifts by whole units.
    channels, d = 1000, 3
    x = torch.full((1, channels, 4 + d - 1, 4 + d - 1), 0.1, dtype=torch.float16, device=device)
    k = torch.ones(1, 4, 4, d, d, dtype=torch.float16, device=device)
    grad = torch.ones(1, channels, 4, 4, dtype=torch.float16, device=device)
    _, dk = ops.adaptive_conv_backward(grad, x, k)
    exact = channels * float(torch.tensor(0.1, dtype=torch.float16))
    assert (dk.float() - exact).abs().max().item() <= 0.0625


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(2, 3, 5, 6, 3), (1, 2, 3, 17, 5)], ids=["narrow", "one-tile-plus"])
def test_gradcheck_float64(ops, device, shape):
    fn = _extension.compiled_adaptive_conv(device)
    x, k, _ = random_problem(shape, dtype=torch.float64, device=device)
    assert torch.autograd.gradcheck(fn, (x.requires_grad_(), k.requires_grad_()), fast_mode=True)


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_inputs(ops, device):
    x, k, grad = random_problem((2, 6, 9, 21, 5), device=device)
    x_view = x.contiguous(memory_format=torch.channels_last)
    k_view = k.transpose(1, 2).contiguous().transpose(1, 2)
    grad_view = torch.stack([grad, -grad], dim=-1)[..., 0]
    assert not (x_view.is_contiguous() or k_view.is_contiguous() or grad_view.is_contiguous())
    assert torch.equal(ops.adaptive_conv_forward(x_view, k_view), ops.adaptive_conv_forward(x, k))
    for got, want in zip(ops.adaptive_conv_backward(grad_view, x_view, k_view), ops.adaptive_conv_backward(grad, x, k)):
        assert torch.equal(got, want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(0, 4, 5, 6, 3), (2, 0, 5, 6, 3), (2, 4, 0, 6, 3)], ids=["B0", "C0", "H0"])
def test_empty_inputs(ops, device, shape):
    x, k, grad = random_problem(shape, device=device)
    out = ops.adaptive_conv_forward(x, k)
    assert out.shape == grad.shape
    dx, dk = ops.adaptive_conv_backward(grad, x, k)
    assert dx.shape == x.shape and dk.shape == k.shape
    assert not dx.any() and not dk.any()


@pytest.mark.parametrize(
    ("x_shape", "k_shape", "message"),
    [
        ((2, 3, 8, 8), (2, 6, 6, 3), "expected 5 dimensions"),
        ((2, 3, 8), (2, 6, 6, 3, 3), "expected 4 dimensions"),
        ((2, 3, 8, 8), (2, 6, 6, 4, 4), "square odd window"),
        ((2, 3, 8, 8), (2, 6, 6, 3, 5), "square odd window"),
        ((2, 3, 8, 8), (3, 6, 6, 3, 3), "batch sizes differ"),
        ((2, 3, 9, 8), (2, 6, 6, 3, 3), r"expected x_padded of spatial size \(8, 8\)"),
        ((2, 3, 16, 16), (2, 6, 6, 11, 11), r"expected d in \{1, 3, 5, 7, 9\}"),
    ],
)
def test_bad_shapes_are_rejected(ops, x_shape, k_shape, message):
    with pytest.raises(RuntimeError, match=message):
        ops.adaptive_conv_forward(torch.zeros(x_shape), torch.zeros(k_shape))


def test_bad_dtypes_and_grad_shapes_are_rejected(ops):
    x, k, grad = random_problem((1, 2, 4, 4, 3))
    with pytest.raises(RuntimeError, match="expected the same dtype"):
        ops.adaptive_conv_forward(x, k.double())
    with pytest.raises(RuntimeError, match="expected float32, float64, float16 or bfloat16"):
        ops.adaptive_conv_forward(x.int(), k.int())
    with pytest.raises(RuntimeError, match=r"expected the forward output's shape \[1, 2, 4, 4\]"):
        ops.adaptive_conv_backward(grad[..., :3], x, k)
    with pytest.raises(RuntimeError, match="expected x_padded's dtype"):
        ops.adaptive_conv_backward(grad.double(), x, k)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_mixed_devices_are_rejected(ops):
    x, k, grad = random_problem((1, 2, 4, 4, 3))
    with pytest.raises(RuntimeError, match="expected the same device"):
        ops.adaptive_conv_forward(x.cuda(), k)
    with pytest.raises(RuntimeError, match="expected x_padded's device"):
        ops.adaptive_conv_backward(grad, x.cuda(), k.cuda())


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(ops, device):
    x, k, grad = random_problem((2, 5, 6, 18, 3), device=device)
    torch.library.opcheck(ops.adaptive_conv_forward.default, (x.requires_grad_(), k.requires_grad_()))
    torch.library.opcheck(ops.adaptive_conv_backward.default, (grad, x.detach(), k.detach()))


def test_torch_compile_traces_the_op(ops):
    x, k, grad = random_problem((2, 4, 6, 18, 3))

    def loss(x, k):
        return (adaptive_conv(x, k, backend="compiled") * grad).sum()

    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    want = torch.autograd.grad(loss(x.requires_grad_(), k.requires_grad_()), (x, k))
    got = torch.autograd.grad(compiled(x, k), (x, k))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_results_do_not_depend_on_thread_count(ops):
    x, k, grad = random_problem((2, 9, 13, 37, 7))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = (ops.adaptive_conv_forward(x, k), *ops.adaptive_conv_backward(grad, x, k))
        torch.set_num_threads(max(2, threads))
        parallel = (ops.adaptive_conv_forward(x, k), *ops.adaptive_conv_backward(grad, x, k))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(serial, parallel):
        assert torch.equal(a, b)


@pytest.mark.parametrize("device", DEVICES)
def test_dispatch_uses_the_kernel_and_agrees_with_pure_torch(ops, device):
    x, k, grad = random_problem((2, 7, 10, 23, 7), device=device)
    results = {}
    for backend in ("compiled", "torch"):
        xr, kr = x.clone().requires_grad_(), k.clone().requires_grad_()
        out = adaptive_conv(xr, kr, backend=backend)
        out.backward(grad)
        results[backend] = (out, xr.grad, kr.grad)
    assert results["compiled"][0].grad_fn.name() != results["torch"][0].grad_fn.name()
    for got, want in zip(results["compiled"], results["torch"]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


@pytest.fixture(scope="module")
def emulated_cuda():
    """csrc/adaptive_conv_cuda_kernels.cuh built for the CPU with CUDA threads emulated (cuda_emulation/)."""
    emulation = KERNELS / "tests" / "cuda_emulation"
    return cpp_extension.load(
        name="featup_cuda_emulation",
        sources=[str(emulation / "emulated_ops.cpp"), str(KERNELS / "csrc" / "adaptive_conv_checks.cpp")],
        extra_include_paths=[str(KERNELS / "csrc"), str(emulation)],
        extra_cflags=["-O1", "-std=c++20"],  # std::barrier; older torch builds default to C++17
    )


@pytest.mark.slow
@pytest.mark.parametrize(("dtype", "rel"), [(torch.float64, 1e-12), (torch.bfloat16, 2**-6)])
@pytest.mark.parametrize(
    ("shape", "multiprocessors", "filter_groups"),
    [((2, 5, 7, 19, 3), 1, 1), ((1, 11, 9, 35, 7), 1, 1), ((1, 3, 4, 4, 9), 1, 1), ((1, 130, 6, 20, 7), 1000, 2)],
    ids=["d3", "d7", "d9-narrow", "d7-channel-groups"],
)
def test_cuda_kernels_emulated_on_cpu(emulated_cuda, shape, multiprocessors, filter_groups, dtype, rel):
    # Many multiprocessors make the launch plan split channels into groups, as on a GPU for small images.
    x, k, grad = random_problem(shape, dtype=dtype)
    assert_close_to(emulated_cuda.forward(x, k, multiprocessors), reference(x, k), rel)
    dx, dk, groups = emulated_cuda.backward(grad, x, k, multiprocessors)
    ref_dx, ref_dk = reference_grads(x, k, grad)
    assert groups == filter_groups
    assert_close_to(dx, ref_dx, rel)
    assert_close_to(dk, ref_dk, rel)
