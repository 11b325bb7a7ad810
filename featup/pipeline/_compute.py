"""Run the models on a batch: the device, autocast, the model's CPU threads, per-stage timings."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import torch
from torch import nn

__all__ = ["AMP_DTYPES", "StageTimes", "cpu_threads", "featurize", "pick_device"]

AMP_DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class StageTimes:
    """Seconds spent in each stage (read/decode = waiting for the loader) and images processed."""

    read: float = 0.0
    backbone: float = 0.0
    upsample: float = 0.0
    write: float = 0.0
    total: float = 0.0
    images: int = 0

    def add(self, other: StageTimes) -> None:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)


def pick_device(device: str = "auto") -> torch.device:
    """``auto`` → the GPU when one is present, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but no CUDA device is available; use device='auto' or 'cpu'")
    return torch.device(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, amp: str):
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp must be one of {sorted(AMP_DTYPES)}, got {amp!r}")
    if AMP_DTYPES[amp] is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp])


@torch.no_grad()
def featurize(
    backbone: nn.Module,
    upsampler: Callable[..., torch.Tensor],
    images: torch.Tensor,
    output_size: tuple[int, int],
    *,
    amp: str = "float32",
    times: StageTimes | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Low-res backbone features and their upsampled version, as ``dtype`` on the images' device, for a
    B×3×H×W batch in 0..1."""
    device = images.device
    times = times if times is not None else StageTimes()
    start = time.perf_counter()
    with _autocast(device, amp):
        low = backbone(backbone.normalize(images))
    _sync(device)
    middle = time.perf_counter()
    with _autocast(device, amp):
        high = upsampler(low, images, output_size)
    _sync(device)
    times.backbone += middle - start
    times.upsample += time.perf_counter() - middle
    return low.to(dtype), high.to(dtype)


@contextlib.contextmanager
def cpu_threads(device: torch.device, threads: int | None) -> Iterator[None]:
    """Run the model on ``threads`` CPU threads inside the block (None or a GPU: unchanged)."""
    if threads is None or device.type != "cpu":
        yield
        return
    if threads < 1:
        raise ValueError(f"model_threads must be at least 1, got {threads}")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


