import pytest
import torch

from featup.pipeline import _model_threads

CPU = torch.device("cpu")


def test_model_threads_apply_inside_the_shard_and_are_restored_after():
    before = torch.get_num_threads()
    with _model_threads(CPU, 1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_model_threads_leave_gpus_and_the_default_alone_and_reject_zero():
    before = torch.get_num_threads()
    with _model_threads(torch.device("cuda"), 1), _model_threads(CPU, None):
        assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="at least 1"), _model_threads(CPU, 0):
        pass
