import pytest
import torch

from featup.ops import neighbour_products
from featup.ops._extension import compiled_unavailable_reason

needs_kernels = pytest.mark.skipif(compiled_unavailable_reason("cpu") is not None,
                                   reason="the compiled CPU kernels did not build")


def reference(queries: torch.Tensor, radius: int) -> torch.Tensor:
    """Unfold every window in float64: B×C·d²×H×W, fine at test sizes."""
    d = 2 * radius + 1
    b, c, h, w = queries.shape
    padded = torch.nn.functional.pad(queries.double(), [radius] * 4, mode="reflect")
    windows = torch.nn.functional.unfold(padded, d).view(b, c, d * d, h, w)
    return (windows * queries.double()[:, :, None]).sum(1)


@pytest.mark.parametrize("backend", ["torch", pytest.param("compiled", marks=needs_kernels)])
def test_matches_unfold_reference(backend):
    q = torch.randn(2, 5, 9, 11, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(neighbour_products(q, 3, backend=backend).double(), reference(q, 3), rtol=1e-5,
                               atol=1e-5)


@pytest.mark.parametrize("backend", ["torch", pytest.param("compiled", marks=needs_kernels)])
def test_gradcheck(backend):
    q = torch.randn(1, 3, 6, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: neighbour_products(x, 2, backend=backend), (q,))


def test_the_centre_tap_is_the_squared_norm():
    q = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(neighbour_products(q, 1)[:, 4], q.square().sum(1))


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="expected B×C×H×W"):
        neighbour_products(torch.zeros(3, 8, 8), 1)
    with pytest.raises(ValueError, match="radius 3 for queries of size"):
        neighbour_products(torch.zeros(1, 2, 3, 8), 3)


@pytest.mark.parametrize("backend", ["torch", pytest.param("compiled", marks=needs_kernels)])
def test_separate_keys(backend):
    g = torch.Generator().manual_seed(3)
    q, k = torch.randn(1, 3, 6, 7, generator=g), torch.randn(1, 3, 6, 7, generator=g)
    padded = torch.nn.functional.pad(k.double(), [1] * 4, mode="reflect")
    windows = torch.nn.functional.unfold(padded, 3).view(1, 3, 9, 6, 7)
    expected = (windows * q.double()[:, :, None]).sum(1)
    torch.testing.assert_close(neighbour_products(q, 1, k, backend=backend).double(), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="keys of shape"):
        neighbour_products(q, 1, k[:, :2])
