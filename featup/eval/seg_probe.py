"""Linear segmentation probe on frozen features: training on sampled pixels, scoring at the label's resolution."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

from featup.eval.metrics import IGNORE_INDEX, confusion_matrix, segmentation_scores
from featup.eval.probe import (
    LinearProbe,
    as_chw,
    resize_map,
    sample_pixels,
    standardization,
)

__all__ = ["evaluate_seg_probe", "fit_seg_probe", "predict_segmentation", "reduce_labels"]


def reduce_labels(label: torch.Tensor, size: tuple[int, int], num_classes: int, mode: str = "majority",
                  ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """An H×W label map on an h×w grid: "majority" (most frequent labelled class per cell) or "nearest".

    A cell with no labelled pixel becomes ``ignore_index``.
    """
    label = torch.as_tensor(label).long()
    if label.ndim != 2:
        raise ValueError(f"expected an H×W label map, got shape {tuple(label.shape)}")
    if tuple(label.shape) == tuple(size):
        return label
    if mode == "nearest":
        # The published protocol: F.interpolate's default nearest on the label map.
        return F.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0].long()
    if mode != "majority":
        raise ValueError(f"unknown label reduction {mode!r}; use 'majority' or 'nearest'")
    valid = label != ignore_index
    if valid.any() and (int(label[valid].max()) >= num_classes or int(label[valid].min()) < 0):
        raise ValueError(f"labels must lie in 0..{num_classes - 1} (or be {ignore_index} = ignore), got "
                         f"{int(label[valid].min())}..{int(label[valid].max())}; pass the right num_classes")
    onehot = F.one_hot(torch.where(valid, label, 0), num_classes).permute(2, 0, 1).float()
    onehot = onehot * valid.float()
    votes = F.adaptive_avg_pool2d(onehot[None], size)[0]
    reduced = votes.argmax(0)
    return torch.where(votes.sum(0) > 0, reduced, torch.full_like(reduced, ignore_index))


def fit_seg_probe(
    pairs: Iterable[tuple[torch.Tensor, torch.Tensor]],
    num_classes: int,
    *,
    label_reduce: str = "majority",
    pixels_per_image: int = 4096,
    steps: int = 300,
    lr: float = 0.05,
    seed: int = 0,
    ignore_index: int = IGNORE_INDEX,
) -> LinearProbe:
    """Train a 1×1-conv probe with cross-entropy on (C×h×w features, H×W label) pairs.

    Labels are reduced to each feature map's grid (``label_reduce``); up to ``pixels_per_image`` labelled
    cells per image are sampled with ``seed``, and the probe is fitted full-batch with Adam.
    """
    generator = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for features, label in pairs:
        features = as_chw(features).detach()
        grid = reduce_labels(label, tuple(features.shape[-2:]), num_classes, label_reduce, ignore_index)
        x, index = sample_pixels(features, grid != ignore_index, pixels_per_image, generator)
        xs.append(x)
        ys.append(grid.reshape(-1)[index])
    if not xs or not sum(len(y) for y in ys):
        raise ValueError("no labelled training pixels; give the probe at least one image with labels")
    x, y = torch.cat(xs), torch.cat(ys)
    if int(y.max()) >= num_classes:
        raise ValueError(f"label {int(y.max())} is out of range for num_classes={num_classes}")
    probe = LinearProbe(*standardization(x), num_classes)
    optimizer = torch.optim.Adam(probe.parameters(), lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            optimizer.zero_grad()
            loss = F.cross_entropy(probe.linear(x), y)
            loss.backward()
            optimizer.step()
    return probe.eval()


@torch.no_grad()
def predict_segmentation(probe: LinearProbe, features: torch.Tensor, size: tuple[int, int],
                         resize_mode: str = "nearest") -> torch.Tensor:
    """H×W class map: the probe's logits on the feature grid, resized to ``size``, then argmax."""
    logits = probe(as_chw(features)[None])
    return resize_map(logits, size, resize_mode)[0].argmax(0)


@torch.no_grad()
def evaluate_seg_probe(
    probe: LinearProbe,
    pairs: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    resize_mode: str = "nearest",
    ignore_index: int = IGNORE_INDEX,
) -> dict[str, float]:
    """mIoU and pixel accuracy (0..1) over all pairs, scored at each label's full resolution."""
    num_classes = probe.conv.out_channels
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for features, label in pairs:
        label = torch.as_tensor(label)
        pred = predict_segmentation(probe, features, tuple(label.shape[-2:]), resize_mode)
        confusion += confusion_matrix(pred, label, num_classes, ignore_index)
    return segmentation_scores(confusion)
