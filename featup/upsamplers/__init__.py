"""Upsamplers behind one interface, ``forward(features, image, output_size=None)``, over a registry.

``create_upsampler(name, dim=...)`` builds an untrained one, ``load_upsampler(name, backbone=...,
checkpoint=...)`` a trained one, ``list_upsamplers()`` names them all: ``bilinear``, ``bilateral`` (the
classical joint bilateral filter, untrained), ``resize_conv``, ``jbu`` and, where its module is present, ``implicit`` (registered by ``featup.upsamplers.implicit``
on first use of the registry).
"""

from featup.upsamplers._registry import (
    create_upsampler,
    list_upsamplers,
    load_upsampler,
    register_upsampler,
    shipped_checkpoint,
)
from featup.upsamplers.bilateral import JointBilateral
from featup.upsamplers.bilinear import Bilinear
from featup.upsamplers.jbu import JBULayer, JBUStack
from featup.upsamplers.resize_conv import ResizeConv

__all__ = [
    "Bilinear",
    "JBULayer",
    "JBUStack",
    "JointBilateral",
    "ResizeConv",
    "create_upsampler",
    "list_upsamplers",
    "load_upsampler",
    "register_upsampler",
    "shipped_checkpoint",
]
