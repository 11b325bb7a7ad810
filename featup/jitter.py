"""Multi-view jitter (pad, zoom, crop, flip) with explicit parameters, so one draw can transform an image
and a feature map of the same size identically.

The transform is the published FeatUp one: reflect-pad by ``pad`` px, optionally zoom the padded image
bilinearly to ``int(side · zoom)`` px, crop back to H×W at (``top``, ``left``), optionally flip
horizontally. ``apply_jitter`` evaluates all four steps as one bilinear resampling (``grid_sample``) at
coordinates computed in closed form, which gives the same values as padding, interpolating and cropping
in turn, but batches a different jitter per item and never materialises the padded or zoomed image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["Jitter", "apply_jitter", "sample_jitter"]


@dataclass(frozen=True)
class Jitter:
    """One view's transform: reflect pad (px), zoom factor (1 = none), crop offsets into the zoomed padded image, flip."""

    pad: int
    zoom: float
    top: int
    left: int
    flip: bool


def _zoomed_side(side: int, pad: int, zoom: float) -> int:
    """Length of one side of the padded image after zooming; crop offsets range over it minus the side."""
    return int((side + 2 * pad) * zoom) if zoom > 1.0 else side + 2 * pad


def sample_jitter(height: int, width: int, max_pad: int, max_zoom: float, generator: torch.Generator) -> Jitter:
    """Draw a jitter for an H×W view: zoom U[1, max_zoom] with probability 0.5, a uniform crop, a flip with probability 0.5."""
    if max_pad < 0 or max_zoom < 1.0:
        raise ValueError(f"got max_pad={max_pad}, max_zoom={max_zoom}; expected max_pad >= 0 and max_zoom >= 1")
    if max_pad >= min(height, width):
        raise ValueError(f"max_pad={max_pad} is too large for a {height}×{width} view: reflect padding needs "
                         f"max_pad < {min(height, width)}")
    draws = torch.rand(3, generator=generator).tolist()
    flip = draws[0] < 0.5
    zoom = 1.0 + draws[2] * (max_zoom - 1.0) if draws[1] < 0.5 else 1.0
    top = int(torch.randint(0, _zoomed_side(height, max_pad, zoom) - height + 1, (), generator=generator))
    left = int(torch.randint(0, _zoomed_side(width, max_pad, zoom) - width + 1, (), generator=generator))
    return Jitter(pad=max_pad, zoom=zoom, top=top, left=left, flip=flip)


def _axis_coords(size: int, pad: int, zoom: float, offset: int, flip: bool) -> torch.Tensor:
    """Input coordinate (pixels, reflected into 0..size-1) sampled by each output pixel along one axis."""
    padded = size + 2 * pad
    zoomed = _zoomed_side(size, pad, zoom)
    if not 0 <= offset <= zoomed - size:
        raise ValueError(f"crop offset {offset} is outside 0..{zoomed - size} for a side of {size} px with pad "
                         f"{pad} and zoom {zoom:.3f}; was the jitter drawn for a view of another size?")
    out = torch.arange(size, dtype=torch.float64)
    if flip:
        out = size - 1 - out
    # Bilinear resizing with align_corners=False, clamped at the border exactly as F.interpolate does.
    src = ((out + offset + 0.5) * (padded / zoomed) - 0.5).clamp(0, padded - 1) - pad
    # Bilinear sampling of a reflect-padded signal equals sampling the signal at reflected coordinates.
    src = src.abs()
    return torch.where(src > size - 1, 2 * (size - 1) - src, src)


def apply_jitter(x: torch.Tensor, jitter: Jitter | Sequence[Jitter]) -> torch.Tensor:
    """Jitter a B×C×H×W batch: one Jitter for every item, or a sequence of N (x has N items, or 1 shared by all N)."""
    if x.ndim != 4:
        raise ValueError(f"expected a B×C×H×W tensor, got shape {tuple(x.shape)}")
    jitters = [jitter] * x.shape[0] if isinstance(jitter, Jitter) else list(jitter)
    if x.shape[0] not in (1, len(jitters)):
        raise ValueError(f"got {len(jitters)} jitters for a batch of {x.shape[0]}; pass one jitter, one per item, "
                         f"or a batch of one image to view {len(jitters)} ways")
    if not jitters:
        return x[:0]
    h, w = x.shape[-2:]
    pad = max(j.pad for j in jitters)
    if pad >= min(h, w):
        raise ValueError(f"pad {pad} is too large for a {h}×{w} input: reflect padding needs pad < {min(h, w)}")
    # Coordinates are built on the CPU in float64 and moved once: a few hundred numbers per view.
    ys = torch.stack([_axis_coords(h, j.pad, j.zoom, j.top, False) for j in jitters])
    xs = torch.stack([_axis_coords(w, j.pad, j.zoom, j.left, j.flip) for j in jitters])
    # grid_sample wants x then y, normalised so -1 and 1 are the centres of the border pixels.
    gy = (2 * ys / max(h - 1, 1) - 1)[:, :, None].expand(-1, h, w)
    gx = (2 * xs / max(w - 1, 1) - 1)[:, None, :].expand(-1, h, w)
    # Half-precision grids would misplace samples by up to a pixel at 224 px, so sample in float32.
    dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    grid = torch.stack([gx, gy], dim=-1).to(device=x.device, dtype=dtype)
    source = (x.expand(len(jitters), -1, -1, -1) if x.shape[0] == 1 else x).to(dtype)
    out = F.grid_sample(source, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out.to(x.dtype)
