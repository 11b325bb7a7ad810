import pytest

from featup.synthetic import SyntheticBackbone

SIZE, STRIDE, DIM = 32, 8, 8


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Every training test runs on one thread (``one_thread`` in tests/conftest.py)."""


@pytest.fixture(scope="module")
def backbone() -> SyntheticBackbone:
    return SyntheticBackbone(DIM, STRIDE, seed=0)
