"""Upsamplers behind one interface, ``forward(features, image, output_size=None)``, over a registry.

``create_upsampler(name, dim=...)`` builds an untrained one, ``load_upsampler(name, backbone=...,
checkpoint=...)`` a trained one, ``list_upsamplers()`` names them all: ``bilinear``, ``bilateral`` (the
classical joint bilateral filter, untrained), ``resize_conv``, ``jbu`` and ``implicit``, each registered
by importing its module here. A loaded one carries its checkpoint's sha256 in ``upsampler_cfg["checkpoint_sha256"]``. Published FeatUp checkpoints
import through ``featup.upsamplers.official.load_official_jbu``.
"""

from featup.upsamplers._registry import (
    UPSAMPLERS,
    create_upsampler,
    list_upsamplers,
    load_upsampler,
    register_upsampler,
    shipped_checkpoint,
)
from featup.upsamplers.bilateral import JointBilateral
from featup.upsamplers.bilinear import Bilinear
from featup.upsamplers.implicit import ImplicitUpsampler
from featup.upsamplers.jbu import JBULayer, JBUStack
from featup.upsamplers.resize_conv import ResizeConv

__all__ = [
    "UPSAMPLERS",
    "Bilinear",
    "ImplicitUpsampler",
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
