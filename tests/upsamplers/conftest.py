"""Upsampler tests run the pure-PyTorch adaptive conv: they check the upsamplers, not whether kernels/ is built
(kernels/tests checks the compiled kernel against the same definition), and never wait for a JIT build."""

import pytest

from featup.ops import BACKEND_ENV_VAR


@pytest.fixture(autouse=True)
def pure_pytorch_adaptive_conv(monkeypatch):
    monkeypatch.setenv(BACKEND_ENV_VAR, "torch")
