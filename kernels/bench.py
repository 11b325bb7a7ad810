"""Adaptive convolution: unfold reference, pure-PyTorch path and compiled kernel, measured side by side in one run.

For each (batch, output size, dtype) it times the forward and forward+backward, measures the peak memory
beyond the inputs, and sets both against the memory-bandwidth floor: the bytes the op must move at least
(read x_padded and filters, write the output; backward: read grad_out, x_padded and filters, write both
gradients), divided by the copy bandwidth measured in the same run.

    python kernels/bench.py --quick                 # CPU, small sizes (a 2-core machine)
    python kernels/bench.py --device cuda           # the full sweep on a GPU
    python kernels/bench.py --sizes 224 --batches 8 --dtypes bfloat16

Workspace is the peak memory beyond the inputs and the tensors the op must return (the output; for
forward+backward also both gradients): torch.cuda.max_memory_allocated on CUDA, the process's peak resident
set (VmHWM, reset before each measurement, with glibc returning large blocks at once) on Linux CPUs.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from featup.ops import adaptive_conv
from featup.ops._extension import compiled_unavailable_reason, kernels_origin

MIB = 1 << 20


@dataclass(frozen=True)
class Case:
    batch: int
    size: int
    channels: int
    d: int
    dtype: torch.dtype

    def bytes_of(self, *shapes: tuple[int, ...]) -> int:
        item = torch.tensor([], dtype=self.dtype).element_size()
        return sum(item * torch.Size(s).numel() for s in shapes)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        b, c, s, d = self.batch, self.channels, self.size, self.d
        return {"x": (b, c, s + d - 1, s + d - 1), "filters": (b, s, s, d, d), "out": (b, c, s, s)}

    def floor_bytes(self) -> tuple[int, int]:
        """Bytes moved at least by the forward, and by forward + backward."""
        x, k, out = self.shapes["x"], self.shapes["filters"], self.shapes["out"]
        forward = self.bytes_of(x, k, out)
        backward = self.bytes_of(out, x, k) + self.bytes_of(x, k)  # read grad, x, K; write dx, dK
        return forward, forward + backward

    def unfold_bytes(self) -> int:
        b, c, s, d = self.batch, self.channels, self.size, self.d
        return self.bytes_of((b, c * d * d, s * s))


@dataclass
class Measurement:
    forward_ms: float
    train_ms: float
    forward_workspace_mib: float | None  # peak memory beyond the inputs and the output
    train_workspace_mib: float | None  # ... beyond the inputs, the output and the two gradients


def unfold_adaptive_conv(x_padded: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """The naive reference: materialises the B x C*d*d x H*W unfold tensor (and a product of its size)."""
    batch, channels = x_padded.shape[:2]
    _, height, width, d, _ = filters.shape
    columns = F.unfold(x_padded, d).view(batch, channels, d * d, height, width)
    taps = filters.reshape(batch, height, width, d * d).permute(0, 3, 1, 2).unsqueeze(1)
    return (columns * taps).sum(2)


METHODS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "unfold": unfold_adaptive_conv,
    "torch": lambda x, k: adaptive_conv(x, k, backend="torch"),
    "compiled": lambda x, k: adaptive_conv(x, k, backend="compiled"),
}


class Clock:
    """Wall-clock milliseconds of a callable: CUDA events on a GPU, perf_counter on a CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn: Callable[[], object]) -> float:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
        begin = time.perf_counter()
        fn()
        return (time.perf_counter() - begin) * 1e3


class PeakMemory:
    """Peak memory beyond what was allocated when `start` was called, in MiB (None where unmeasurable)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.linux = sys.platform.startswith("linux")
        if not self.cuda and self.linux:
            # glibc keeps freed blocks for reuse unless they were mmapped: mmap everything from 64 KiB up, so
            # that resident memory follows the tensors alive (M_MMAP_THRESHOLD = -3).
            ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 16)
        self.baseline = 0

    def _status_kib(self, key: str) -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(key))

    def start(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.baseline = torch.cuda.memory_allocated()
        elif self.linux:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current resident set
            self.baseline = self._status_kib("VmRSS") * 1024

    def peak_mib(self) -> float | None:
        if self.cuda:
            return (torch.cuda.max_memory_allocated() - self.baseline) / MIB
        if self.linux:
            return (self._status_kib("VmHWM") * 1024 - self.baseline) / MIB
        return None


def measure(method: Callable, case: Case, device: torch.device, repeats: int) -> Measurement:
    g = torch.Generator(device=device).manual_seed(0)
    shapes = case.shapes
    x = torch.randn(shapes["x"], generator=g, device=device, dtype=case.dtype)
    k = torch.randn(shapes["filters"], generator=g, device=device, dtype=case.dtype) / case.d
    grad = torch.randn(shapes["out"], generator=g, device=device, dtype=case.dtype)
    clock, memory = Clock(device), PeakMemory(device)

    def forward() -> None:
        with torch.no_grad():
            method(x, k)

    xr, kr = x.clone().requires_grad_(), k.clone().requires_grad_()

    def train() -> None:
        xr.grad = kr.grad = None
        method(xr, kr).backward(grad)

    train()  # warm-up: first-use costs (kernel build, allocator growth) stay out of the timings
    xr.grad = kr.grad = None
    workspaces = []
    for fn, required in ((forward, ("out",)), (train, ("out", "x", "filters"))):
        memory.start()
        fn()
        peak = memory.peak_mib()
        required_mib = case.bytes_of(*(shapes[name] for name in required)) / MIB
        workspaces.append(None if peak is None else max(0.0, peak - required_mib))
        xr.grad = kr.grad = None
    forward_ms = statistics.median(clock(forward) for _ in range(repeats))
    train_ms = statistics.median(clock(train) for _ in range(repeats))
    return Measurement(forward_ms, train_ms, *workspaces)


def copy_bandwidth(device: torch.device, clock: Clock) -> float:
    """Bytes per second of a large tensor copy (read + write), the best of a few."""
    src = torch.ones(64 * MIB, device=device)  # 256 MiB of float32
    dst = torch.empty_like(src)
    dst.copy_(src)
    best_ms = min(clock(lambda: dst.copy_(src)) for _ in range(5))
    return 2 * src.numel() * src.element_size() / (best_ms / 1e3)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    return f"{model}, {torch.get_num_threads()} threads"


def unfold_fits(case: Case, device: torch.device) -> bool:
    """The unfold tensor, its gradient and the einsum's copy must fit in about half the free memory."""
    need = 3 * case.unfold_bytes()
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return need < free / 2


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[56, 112, 224, 448], help="output H = W")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--channels", type=int, default=384)
    parser.add_argument("--d", type=int, default=7, help="filter window (d x d taps)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per measurement (median)")
    parser.add_argument("--quick", action="store_true", help="sizes 56 and 112, batch 1, 3 repeats")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.batches = [56, 112], [1]
    if args.repeats is None:
        args.repeats = 3 if args.quick or args.device == "cpu" else 20
    return args


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    if "compiled" in args.methods:
        reason = compiled_unavailable_reason(device.type)
        if reason is not None:
            sys.exit(f"no compiled kernel for {device.type}: {reason}")
    clock = Clock(device)
    bandwidth = copy_bandwidth(device, clock)
    print(f"device: {device_name(device)}; torch {torch.__version__}; kernels from {kernels_origin()}")
    print(f"copy bandwidth {bandwidth / 1e9:.1f} GB/s; C={args.channels}, d={args.d}; median of {args.repeats}")
    print()
    print(
        "| B | size | dtype | method | fwd ms | fwd+bwd ms | fwd workspace MiB | fwd+bwd workspace MiB "
        "| output MiB | fwd / compiled | fwd+bwd / compiled | compiled fwd+bwd / floor |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for dtype_name in args.dtypes:
        for batch in args.batches:
            for size in args.sizes:
                case = Case(batch, size, args.channels, args.d, getattr(torch, dtype_name))
                report(case, args, device, bandwidth)


def report(case: Case, args: argparse.Namespace, device: torch.device, bandwidth: float) -> None:
    results: dict[str, Measurement | str] = {}
    for name in args.methods:
        if name == "unfold" and not unfold_fits(case, device):
            results[name] = f"skipped: the unfold tensor alone is {case.unfold_bytes() / MIB:.0f} MiB"
            continue
        results[name] = measure(METHODS[name], case, device, args.repeats)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    floor_fwd, floor_train = (b / bandwidth * 1e3 for b in case.floor_bytes())
    output_mib = case.bytes_of(case.shapes["out"]) / MIB
    compiled = results.get("compiled")
    prefix = f"| {case.batch} | {case.size}² | {str(case.dtype).removeprefix('torch.')}"
    for name, r in results.items():
        if isinstance(r, str):
            print(f"{prefix} | {name} | {r} | | | | | | | |")
            continue
        versus = isinstance(compiled, Measurement)
        fwd_ratio = f"{r.forward_ms / compiled.forward_ms:.1f}x" if versus else ""
        train_ratio = f"{r.train_ms / compiled.train_ms:.1f}x" if versus else ""
        to_floor = f"{r.train_ms / floor_train:.2f}x" if name == "compiled" else ""
        workspaces = (r.forward_workspace_mib, r.train_workspace_mib)
        fwd_ws, train_ws = ("n/a" if m is None else f"{m:.0f}" for m in workspaces)
        print(
            f"{prefix} | {name} | {r.forward_ms:.2f} | {r.train_ms:.2f} | {fwd_ws} | {train_ws} | {output_mib:.0f} "
            f"| {fwd_ratio} | {train_ratio} | {to_floor} |"
        )
    print(f"{prefix} | floor | {floor_fwd:.2f} | {floor_train:.2f} | | | {output_mib:.0f} | | | |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
