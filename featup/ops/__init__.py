"""Custom operators behind the JBU: the adaptive convolution and the neighbour products of its range kernel,
compiled when built, pure PyTorch otherwise."""

from featup.ops.adaptive_conv import BACKEND_ENV_VAR, BACKENDS, adaptive_conv
from featup.ops.neighbour_products import neighbour_products

__all__ = ["BACKEND_ENV_VAR", "BACKENDS", "adaptive_conv", "neighbour_products"]
