"""Pieces both training loops share: device and seeding helpers, autocast, the learning-rate schedule, view pooling."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext

import torch
from torch import nn

from featup.jitter import Jitter, apply_jitter

LogFn = Callable[[dict[str, float]], None]


def device_of(module: nn.Module) -> torch.device:
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


def step_seed(seed: int, step: int) -> int:
    # Distinct, reproducible streams per (seed, step); 2**61 - 1 is prime, keeping seeds in int64 range.
    return (seed * 1_000_003 + step * 7919 + 17) % (2**61 - 1)


def gpu_autocast(device: torch.device):
    # bfloat16 on GPUs only: CPU autocast slows these element-wise-heavy graphs down.
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def check_backbone(backbone: nn.Module) -> None:
    missing = [name for name in ("normalize", "stride", "dim", "name") if not hasattr(backbone, name)]
    if missing:
        raise TypeError(f"backbone lacks {missing}; pass a featup backbone (featup.backbones.load_backbone) or a "
                        "module with .normalize, .stride, .dim and .name")


def pool_views(downsampler: nn.Module, values: torch.Tensor, saliency: torch.Tensor | None,
                jitters: Sequence[Jitter], grid: tuple[int, int]) -> torch.Tensor:
    """Jitter per-view values (and the saliency logits) and pool them onto the backbone's grid."""
    if saliency is None:
        return downsampler(apply_jitter(values, jitters), grid)
    return downsampler(apply_jitter(values, jitters), grid, saliency=apply_jitter(saliency, jitters))


def scheduled_lr(peak: float, step: int, steps: int, warmup: int) -> float:
    """Learning rate at ``step`` of ``steps``: linear warm-up to ``peak`` over ``warmup`` steps, then a cosine to 0."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(steps - warmup, 1)))
