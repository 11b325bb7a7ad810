"""Scores for dense predictions: segmentation IoU, scale-and-shift-aligned depth error, CAM faithfulness,
and how closely upsampled features follow the image's edges."""

from __future__ import annotations

import torch

__all__ = [
    "IGNORE_INDEX",
    "align_scale_shift",
    "average_drop",
    "average_increase",
    "confusion_matrix",
    "depth_errors",
    "edge_alignment",
    "segmentation_scores",
]

IGNORE_INDEX = 255


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """K×K counts (rows: true class, columns: predicted) over pixels whose target is not ``ignore_index``."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}; "
                         "resize the prediction to the label's size before scoring")
    target = target.reshape(-1).long()
    pred = pred.reshape(-1).long()
    keep = target != ignore_index
    target, pred = target[keep], pred[keep]
    if target.numel() and (int(target.max()) >= num_classes or int(target.min()) < 0):
        raise ValueError(f"labels must lie in 0..{num_classes - 1} (or be {ignore_index} = ignore), got values "
                         f"{int(target.min())}..{int(target.max())}; pass the right num_classes")
    counts = torch.bincount(target * num_classes + pred.clamp(0, num_classes - 1), minlength=num_classes ** 2)
    return counts.reshape(num_classes, num_classes)


def segmentation_scores(confusion: torch.Tensor) -> dict[str, float]:
    """mIoU over the classes that occur (in labels or predictions) and pixel accuracy, both in 0..1."""
    confusion = confusion.double()
    true_positive = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - true_positive
    present = union > 0
    if not present.any():
        raise ValueError("no labelled pixels were scored; is every pixel the ignore label?")
    iou = true_positive[present] / union[present]
    return {"miou": float(iou.mean()), "accuracy": float(true_positive.sum() / confusion.sum())}


def align_scale_shift(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``s·pred + t`` with the per-image (B×H×W, or B×N) least-squares scale s and shift t onto ``target``."""
    mask = torch.ones_like(target, dtype=torch.bool) if mask is None else mask.bool()
    dims = tuple(range(1, pred.ndim))
    m = mask.to(pred.dtype)
    # Normal equations of min_{s,t} Σ m (s·p + t − d)², solved in closed form so gradients flow through.
    a00 = (m * pred * pred).sum(dims)
    a01 = (m * pred).sum(dims)
    a11 = m.sum(dims)
    b0 = (m * pred * target).sum(dims)
    b1 = (m * target).sum(dims)
    det = a00 * a11 - a01 * a01
    ok = det.abs() > 1e-12 * (a00 * a11).clamp_min(1e-30)
    safe = torch.where(ok, det, torch.ones_like(det))
    scale = torch.where(ok, (a11 * b0 - a01 * b1) / safe, torch.zeros_like(det))
    # A constant prediction cannot be scaled: the best fit is the target's mean.
    shift = torch.where(ok, (a00 * b1 - a01 * b0) / safe, b1 / a11.clamp_min(1))
    view = (-1,) + (1,) * (pred.ndim - 1)
    return scale.view(view) * pred + shift.view(view)


def depth_errors(pred: torch.Tensor, target: torch.Tensor,
                 mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image RMSE and δ<1.25 (fraction of pixels with max(p/d, d/p) < 1.25) after scale-and-shift alignment.

    ``pred`` and ``target`` are B×H×W; ``mask`` marks valid ground truth (default: finite and positive).
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} differs from depth shape {tuple(target.shape)}; "
                         "resize the prediction to the depth map's size before scoring")
    valid = torch.isfinite(target) & (target > 0)
    mask = valid if mask is None else mask.bool() & valid
    if not mask.flatten(1).any(1).all():
        raise ValueError("an image has no valid depth pixels (finite and > 0); drop it from the evaluation")
    target = torch.where(mask, target, torch.zeros_like(target))
    aligned = align_scale_shift(pred.double(), target.double(), mask)
    m = mask.double()
    dims = tuple(range(1, pred.ndim))
    rmse = ((m * (aligned - target) ** 2).sum(dims) / m.sum(dims)).sqrt()
    # An aligned depth ≤ 0 is physically impossible: count it as a miss rather than dividing by it.
    positive = aligned > 0
    ratio = torch.maximum(aligned / target.clamp_min(1e-12), target / aligned.clamp_min(1e-12))
    hit = (ratio < 1.25) & positive & mask
    delta1 = hit.double().sum(dims) / m.sum(dims)
    return rmse.float(), delta1.float()


def average_drop(y: torch.Tensor, o: torch.Tensor) -> float:
    """Mean over images of max(0, Y − O) / Y, in percent (Y: class score on the image, O: on the CAM-masked image)."""
    y, o = y.double(), o.double()
    return float((torch.clamp(y - o, min=0) / y.clamp_min(1e-12)).mean() * 100)


def average_increase(y: torch.Tensor, o: torch.Tensor) -> float:
    """Percentage of images whose class score rises when the image is masked by its CAM (O > Y)."""
    return float((o.double() > y.double()).double().mean() * 100)


def _gradient_magnitude(x: torch.Tensor) -> torch.Tensor:
    """B×(H−1)×(W−1) norm over channels of forward differences, each channel scaled to unit spread."""
    x = x.float()
    x = x / x.flatten(2).std(-1).clamp_min(1e-8)[..., None, None]
    dy = x[..., 1:, :-1] - x[..., :-1, :-1]
    dx = x[..., :-1, 1:] - x[..., :-1, :-1]
    return (dy.square() + dx.square()).sum(1).sqrt()


def edge_alignment(features: torch.Tensor, image: torch.Tensor) -> float:
    """Pearson correlation between where B×C×H×W features change and where the B×3×H×W image does.

    1 when the features' edges are the image's, about 0 for features blind to it (a bilinear blow-up of
    a coarse grid); a measure of how sharply an upsampler follows object boundaries, averaged over images.
    """
    if features.shape[0] != image.shape[0] or features.shape[-2:] != image.shape[-2:]:
        raise ValueError(f"features {tuple(features.shape)} and image {tuple(image.shape)} must have the same batch "
                         "and size; upsample the features to the image's size first")
    scores = []
    for f, i in zip(_gradient_magnitude(features), _gradient_magnitude(image), strict=True):
        f, i = f.flatten() - f.mean(), i.flatten() - i.mean()
        scores.append(float(f @ i / (f.norm() * i.norm()).clamp_min(1e-12)))
    return sum(scores) / len(scores)
