"""Let ``import torchvision`` (and so ``import timm``) succeed where torchvision's compiled ops cannot load.

The torchvision wheel on PyPI is CUDA-linked; next to a CPU build of torch its ``_C`` library fails to
load, and ``import torchvision`` then dies in ``_meta_registrations`` with "operator torchvision::nms
does not exist". featup needs only torchvision's pure-Python parts (through timm), so when — and only
when — the library cannot load, we declare the op schemas it would have declared. Calling one of those
ops still fails, with PyTorch's "no kernel" error. Where the library loads, this does nothing.

``install()`` puts a one-shot import hook on ``sys.meta_path`` that acts on the first ``import
torchvision``; the project's virtualenv runs it in every interpreter through a ``.pth`` file (see
``./run``), so Dask workers and subprocesses are covered without editing any installed package.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys

# Schemas of torchvision's C++ ops (torchvision/csrc/ops/*.cpp), stable since torchvision 0.15.
_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
    "int sampling_ratio, bool aligned) -> Tensor",
    "_roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, SymInt pooled_height, "
    "SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width, "
    "int sampling_ratio, bool aligned) -> Tensor",
    "ps_roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
    "int sampling_ratio) -> (Tensor, Tensor)",
    "_ps_roi_align_backward(Tensor grad, Tensor rois, Tensor channel_mapping, float spatial_scale, "
    "SymInt pooled_height, SymInt pooled_width, int sampling_ratio, SymInt batch_size, SymInt channels, "
    "SymInt height, SymInt width) -> Tensor",
    "roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width) "
    "-> (Tensor, Tensor)",
    "_roi_pool_backward(Tensor grad, Tensor rois, Tensor argmax, float spatial_scale, SymInt pooled_height, "
    "SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width) -> Tensor",
    "ps_roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width) "
    "-> (Tensor, Tensor)",
    "_ps_roi_pool_backward(Tensor grad, Tensor rois, Tensor channel_mapping, float spatial_scale, "
    "SymInt pooled_height, SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, "
    "SymInt width) -> Tensor",
    "qroi_align(Tensor input, Tensor rois, float input_scale, int input_zero_point, float rois_scale, "
    "int rois_zero_point, float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
    "int sampling_ratio, bool aligned) -> Tensor",
    "deform_conv2d(Tensor input, Tensor weight, Tensor offset, Tensor mask, Tensor bias, SymInt stride_h, "
    "SymInt stride_w, SymInt pad_h, SymInt pad_w, SymInt dilation_h, SymInt dilation_w, SymInt groups, "
    "SymInt offset_groups, bool use_mask) -> Tensor",
    "_deform_conv2d_backward(Tensor grad, Tensor input, Tensor weight, Tensor offset, Tensor mask, "
    "Tensor bias, SymInt stride_h, SymInt stride_w, SymInt pad_h, SymInt pad_w, SymInt dilation_h, "
    "SymInt dilation_w, SymInt groups, SymInt offset_groups, bool use_mask) -> (Tensor, Tensor, Tensor, "
    "Tensor, Tensor)",
)

_library = None  # the torch.library.Library holding the declared schemas; must stay alive


def _torchvision_ops_library() -> str | None:
    """Path of torchvision's compiled ops library, without importing torchvision."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = spec.submodule_search_locations[0]
    names = [n for n in os.listdir(folder) if n.startswith("_C.") and n.endswith((".so", ".pyd"))]
    return os.path.join(folder, names[0]) if names else None


def declare_missing_ops() -> bool:
    """Declare torchvision's op schemas if its compiled library cannot load; True if it declared them."""
    global _library
    import torch

    path = _torchvision_ops_library()
    if path is None or _library is not None:
        return False
    try:
        torch.ops.load_library(path)
        return False
    except (OSError, RuntimeError):
        pass
    _library = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _SCHEMAS:
        name = schema.split("(", 1)[0]
        if not torch._C._dispatch_has_kernel(f"torchvision::{name}") and not _has_schema(name):
            _library.define(schema)
    return True


def _has_schema(name: str) -> bool:
    import torch

    try:
        torch._C._get_schema(f"torchvision::{name}", "")
        return True
    except RuntimeError:
        return False


class _Hook(importlib.abc.MetaPathFinder):
    """Runs `declare_missing_ops` once, just before torchvision is first imported."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchvision":
            uninstall()
            declare_missing_ops()
        return None  # the regular finders import torchvision itself


def install() -> None:
    """Arm the hook (idempotent). If torchvision is already imported there is nothing left to fix."""
    if "torchvision" in sys.modules or any(isinstance(f, _Hook) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _Hook())


def uninstall() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _Hook)]
