"""Linear depth probe on frozen features, trained with the scale-and-shift-invariant loss."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

from featup.eval.metrics import align_scale_shift, depth_errors
from featup.eval.probe import (
    LinearProbe,
    as_chw,
    resize_map,
    sample_pixels,
    standardization,
)

__all__ = ["evaluate_depth_probe", "fit_depth_probe", "predict_depth", "reduce_depth", "ssi_loss"]


def _valid(depth: torch.Tensor) -> torch.Tensor:
    return torch.isfinite(depth) & (depth > 0)


def reduce_depth(depth: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """An H×W depth map averaged over the valid pixels of each cell of an h×w grid: (depth, valid)."""
    depth = torch.as_tensor(depth).float()
    if depth.ndim != 2:
        raise ValueError(f"expected an H×W depth map, got shape {tuple(depth.shape)}")
    valid = _valid(depth)
    if tuple(depth.shape) == tuple(size):
        return torch.where(valid, depth, torch.zeros_like(depth)), valid
    weight = F.adaptive_avg_pool2d(valid.float()[None, None], size)[0, 0]
    total = F.adaptive_avg_pool2d(torch.where(valid, depth, torch.zeros_like(depth))[None, None], size)[0, 0]
    ok = weight > 0
    return torch.where(ok, total / weight.clamp_min(1e-12), torch.zeros_like(total)), ok


def ssi_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Scale-and-shift-invariant MSE (MiDaS): per image, align pred to target by least squares, then mean error."""
    aligned = align_scale_shift(pred, target, mask)
    m = mask.to(pred.dtype)
    per_image = (m * (aligned - target) ** 2).sum(1) / m.sum(1).clamp_min(1)
    return per_image.mean()


def fit_depth_probe(
    pairs: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    pixels_per_image: int = 2048,
    steps: int = 300,
    lr: float = 0.02,
    seed: int = 0,
) -> LinearProbe:
    """Train a 1×1-conv probe to one channel with `ssi_loss` on (C×h×w features, H×W depth) pairs.

    Depth is averaged onto each feature grid; up to ``pixels_per_image`` valid cells per image are sampled
    with ``seed`` and the probe is fitted full-batch with Adam.
    """
    generator = torch.Generator().manual_seed(seed)
    xs, ds = [], []
    for features, depth in pairs:
        features = as_chw(features).detach()
        grid, valid = reduce_depth(depth, tuple(features.shape[-2:]))
        x, index = sample_pixels(features, valid, pixels_per_image, generator)
        if len(index) >= 2:  # scale and shift need two pixels
            xs.append(x)
            ds.append(grid.reshape(-1)[index])
    if not xs:
        raise ValueError("no training image has two valid depth pixels; check the depth maps (finite, > 0)")
    n = max(len(d) for d in ds)
    # Images keep their own scale and shift, so pixels stay grouped per image (padded, masked).
    x = torch.zeros(len(xs), n, xs[0].shape[1])
    d = torch.zeros(len(xs), n)
    m = torch.zeros(len(xs), n, dtype=torch.bool)
    for i, (xi, di) in enumerate(zip(xs, ds)):
        x[i, :len(di)], d[i, :len(di)], m[i, :len(di)] = xi, di, True
    probe = LinearProbe(*standardization(x[m]), 1)
    # The SSI loss is not convex in the weights (each image's scale is solved for), and Adam from a random
    # start lands in poor minima; start from the convex shift-invariant least-squares solution instead.
    with torch.no_grad():
        probe.conv.weight.copy_(_shift_invariant_solution(probe, x, d, m).reshape(probe.conv.weight.shape))
    optimizer = torch.optim.Adam(probe.parameters(), lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            optimizer.zero_grad()
            pred = probe.linear(x.reshape(-1, x.shape[-1])).reshape(m.shape)
            loss = ssi_loss(pred, d, m)
            loss.backward()
            optimizer.step()
    return probe.eval()


def _shift_invariant_solution(probe: LinearProbe, x: torch.Tensor, d: torch.Tensor, m: torch.Tensor,
                              ridge: float = 1e-3) -> torch.Tensor:
    """Weights w minimising Σ_images min_t ‖z·w + t − d‖² (z: standardised features), by ridge regression
    on per-image centred pixels."""
    z = (x - probe.mean.flatten()) / probe.std.flatten()
    weight = m.unsqueeze(-1).double()
    count = weight.sum(1, keepdim=True).clamp_min(1)
    zc = (z.double() - (z.double() * weight).sum(1, keepdim=True) / count) * weight
    dc = (d.double() - (d.double() * weight[..., 0]).sum(1, keepdim=True) / count[..., 0]) * weight[..., 0]
    gram = torch.einsum("bnc,bnk->ck", zc, zc)
    rhs = torch.einsum("bnc,bn->c", zc, dc)
    gram += ridge * gram.diagonal().mean().clamp_min(1e-12) * torch.eye(gram.shape[0], dtype=gram.dtype)
    return torch.linalg.solve(gram, rhs).float()


@torch.no_grad()
def predict_depth(probe: LinearProbe, features: torch.Tensor, size: tuple[int, int],
                  resize_mode: str = "nearest") -> torch.Tensor:
    """H×W raw probe output (defined up to scale and shift), resized from the feature grid to ``size``."""
    return resize_map(probe(as_chw(features)[None]), size, resize_mode)[0, 0]


@torch.no_grad()
def evaluate_depth_probe(
    probe: LinearProbe,
    pairs: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    resize_mode: str = "nearest",
) -> dict[str, float]:
    """Mean over images of RMSE and δ<1.25 after per-image scale-and-shift alignment, at full resolution."""
    rmses, deltas = [], []
    for features, depth in pairs:
        depth = torch.as_tensor(depth).float()
        pred = predict_depth(probe, features, tuple(depth.shape[-2:]), resize_mode)
        rmse, delta1 = depth_errors(pred[None], depth[None])
        rmses.append(rmse)
        deltas.append(delta1)
    if not rmses:
        raise ValueError("no evaluation images were given")
    return {"rmse": float(torch.cat(rmses).mean()), "delta1": float(torch.cat(deltas).mean())}
