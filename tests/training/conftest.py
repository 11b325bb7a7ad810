import pytest
import torch

from featup.synthetic import SyntheticBackbone

SIZE, STRIDE, DIM = 32, 8, 8


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # These tensors are tiny: a second thread costs more in synchronisation than it saves, badly so on a busy machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def backbone() -> SyntheticBackbone:
    return SyntheticBackbone(DIM, STRIDE, seed=0)
