"""Custom operators: the adaptive convolution behind JBU, compiled when built, pure PyTorch otherwise."""

from featup.ops.adaptive_conv import BACKEND_ENV_VAR, BACKENDS, adaptive_conv

__all__ = ["BACKEND_ENV_VAR", "BACKENDS", "adaptive_conv"]
