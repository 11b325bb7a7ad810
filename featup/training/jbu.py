"""Training a JBU stack for a frozen backbone over a dataset of images, resumable from its checkpoint."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from featup.backbones import IMAGENET_MEAN, IMAGENET_STD
from featup.checkpoints import load_checkpoint, save_checkpoint
from featup.downsamplers import AttentionDownsampler, SimpleDownsampler
from featup.jitter import apply_jitter, sample_jitter
from featup.losses import (
    UncertaintyScale,
    crf_loss,
    gaussian_nll,
    project,
    random_projection,
)
from featup.training._common import (
    LogFn,
    check_backbone,
    device_of,
    gpu_autocast,
    pool_views,
    scheduled_lr,
    step_seed,
)
from featup.upsamplers import JBUStack, create_upsampler

__all__ = ["train_jbu", "training_state_path"]

# The CRF term compares colours of the ImageNet-normalised image, the published guidance.
_IMAGENET_MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
_IMAGENET_STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def training_state_path(checkpoint: str | os.PathLike) -> str:
    """Where ``train_jbu`` keeps the resumable state (optimizer, downsampler, step) beside ``checkpoint``."""
    return f"{os.fspath(checkpoint)}.state"


def _square_image(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize the short side of a 3×H×W (0..1) image to ``size`` and centre-crop to size×size."""
    if image.ndim != 3 or image.shape[0] != 3 or not image.is_floating_point():
        raise ValueError(f"expected training images as 3×H×W float tensors in 0..1, got {image.dtype} "
                         f"{tuple(image.shape)} (convert uint8 with image.float() / 255)")
    h, w = image.shape[-2:]
    if (h, w) != (size, size):
        scale = size / min(h, w)
        new = (max(size, round(h * scale)), max(size, round(w * scale)))
        image = F.interpolate(image[None], size=new, mode="bilinear", align_corners=False,
                              antialias=scale < 1)[0].clamp(0, 1)
        top, left = (new[0] - size) // 2, (new[1] - size) // 2
        image = image[:, top:top + size, left:left + size]
    return image


def _make_downsampler(kind: str, dim: int, kernel_size: int, stride: int) -> nn.Module:
    if kind == "attention":
        return AttentionDownsampler(dim, kernel_size, stride)
    if kind == "simple":
        return SimpleDownsampler(kernel_size, stride)
    raise ValueError(f"unknown downsampler {kind!r}; choose 'attention' or 'simple'")


class _Tensors(nn.Module):
    """A module whose state dict is the given tensors: lets optimizer state travel through save_checkpoint."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        super().__init__()
        self.tensors = tensors

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        return dict(self.tensors)


def _training_state(parts: nn.ModuleDict, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    tensors = {f"model.{k}": v for k, v in parts.state_dict().items()}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensors[f"optimizer.{index}.{key}"] = torch.as_tensor(value)
    return tensors


def _restore_training_state(tensors: dict[str, torch.Tensor], param_groups: list, parts: nn.ModuleDict,
                            optimizer: torch.optim.Optimizer) -> None:
    parts.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": param_groups})


def train_jbu(
    backbone: nn.Module,
    images: torch.Tensor | Sequence[torch.Tensor],
    steps: int,
    *,
    upsampler: nn.Module | None = None,
    batch_size: int = 4,
    num_jitters: int = 5,
    lr: float = 1e-3,
    head_lr: float | None = None,
    image_size: int = 224,
    downsampler: str = "attention",
    max_pad: int = 20,
    max_zoom: float = 2.0,
    projection_dim: int = 30,
    warmup_clip_steps: int = 10,
    lr_decay: bool = False,
    range_kernel: str = "distance",
    init: str = "bilateral",
    crf_weight: float = 0.0,
    consistency_weight: float = 0.0,
    contrast_weight: float = 0.0,
    layer_fixups: bool = True,
    seed: int = 0,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 100,
    resume: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    progress: bool = True,
    log: LogFn | None = None,
) -> tuple[nn.Module, list[dict[str, float]]]:
    """Train a JBU upsampler (default: a new ``JBUStack``) for a frozen backbone; returns it (eval mode) and the loss log.

    ``images`` is an N×3×H×W tensor or a sequence of 3×H×W tensors in 0..1 (resized and centre-cropped
    to ``image_size``). Defaults are the published recipe: NAdam 1e-3, batch 4, 5 jitters per image
    (pad 20, zoom ≤ 2), attention downsampler with windows = the backbone's patches, 30-d random
    projections, gradient-norm clip 1e-4 for the first 10 steps, constant learning rate (``lr_decay``
    anneals it to zero over ``steps`` on a cosine, which lets short runs end in a settled state).
    A new stack has the bilateral range kernel (``range_kernel="distance"``) and starts as the classical
    joint bilateral upsampler (``init="bilateral"``); ``range_kernel="dot", init="random"`` is the published
    layer and initialisation (see ``featup.upsamplers.jbu`` for why featup departs from it).
    ``crf_weight`` adds FeatUp's sampled dense-CRF term (``featup.losses.crf_loss``; the published weight is
    0.001) on each image's first view, with features and image aligned.
    ``consistency_weight`` adds the mean squared difference between the upsampled features average-pooled
    back onto the backbone's grid and the backbone's features (in each view's projection, RMS units): the
    multi-view term pools through a learned downsampler, which can absorb features leaking across cells,
    so nothing else holds each cell's plain average to the backbone's (the CRF term sharpens by leaking).
    ``contrast_weight`` adds the squared log ratio of each projected map's spatial spread on the backbone's
    grid, upsampled-and-pooled over the backbone's: the CRF term can be lowered by shrinking every feature,
    and a probe trained on the backbone's features misreads shrunken ones.
    ``layer_fixups=False`` keeps each JBU layer's learned tap correction (its ``fixup_proj`` output) at zero, so
    every layer stays a bilateral filter with positive taps in a learned colour space: the signed corrections
    sharpen and keep meaning, but CAMs read them as noise (the shipped stride-32 head is trained without them).
    ``head_lr`` (default ``lr``) is the rate of the downsampler and the uncertainty net, which are linear in
    the backbone's channels: one NAdam step moves their outputs in proportion to the width, so a
    1280-channel head wants a smaller rate than the upsampler's to stay stable.

    With ``checkpoint`` the upsampler is written there every ``checkpoint_every`` steps and at the end
    (load it with ``featup.upsamplers.load_upsampler("jbu", checkpoint=...)``), and the state to resume
    from beside it (``training_state_path``); ``resume=True`` continues from that state when it exists. Every
    setting must match the state's except the loss weights (``crf_weight``, ``consistency_weight``,
    ``contrast_weight``): a resumed run may change those, and the checkpoint lists each change with its step
    (``training_changes`` in its metadata).
    """
    check_backbone(backbone)
    count = len(images)
    if count == 0 or steps < 0 or batch_size < 1 or num_jitters < 1:
        raise ValueError(f"got {count} images, steps={steps}, batch_size={batch_size}, num_jitters={num_jitters}; "
                         "expected at least one image, steps >= 0, batch_size >= 1, num_jitters >= 1")
    stride = backbone.stride
    if image_size % stride:
        raise ValueError(f"image_size {image_size} is not a multiple of the backbone's stride {stride}; "
                         f"use {image_size // stride * stride} or {(image_size // stride + 1) * stride}")
    if resume and checkpoint is None:
        raise ValueError("resume=True needs checkpoint=<path or URL> to resume from")
    if init not in ("bilateral", "random"):
        raise ValueError(f"got init={init!r}, expected 'bilateral' or 'random'")
    if init == "bilateral" and range_kernel != "distance":
        raise ValueError("init='bilateral' needs range_kernel='distance'; use init='random' for the dot-product kernel")
    device = device_of(backbone)
    grid = (image_size // stride, image_size // stride)
    backbone.eval()
    config = {"backbone": getattr(backbone, "id", backbone.name), "image_size": image_size, "batch_size": batch_size,
              "num_jitters": num_jitters, "lr": lr, "downsampler": downsampler, "max_pad": max_pad,
              "max_zoom": max_zoom, "projection_dim": projection_dim, "seed": seed, "lr_decay": lr_decay}
    if upsampler is None:
        config |= {"range_kernel": range_kernel, "init": init}
    if crf_weight:
        config["crf_weight"] = crf_weight
    if consistency_weight:
        config["consistency_weight"] = consistency_weight
    if contrast_weight:
        config["contrast_weight"] = contrast_weight
    if not layer_fixups:
        config["layer_fixups"] = False
    if lr_decay:
        config["steps"] = steps  # the schedule depends on the run's length
    if head_lr is not None:
        config["head_lr"] = head_lr

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        if upsampler is None:
            upsampler = create_upsampler("jbu", dim=backbone.dim, range_kernel=range_kernel)
            if init == "bilateral":
                upsampler.init_bilateral()
        if not layer_fixups:
            _freeze_layer_fixups(upsampler)
        parts = nn.ModuleDict({
            "upsampler": upsampler,
            "downsampler": _make_downsampler(downsampler, backbone.dim, stride, stride),
            "scale": UncertaintyScale(backbone.dim),
        }).to(device)
        rates = [lr, lr if head_lr is None else head_lr]
        optimizer = torch.optim.NAdam([
            {"params": parts["upsampler"].parameters(), "lr": rates[0]},
            {"params": [*parts["downsampler"].parameters(), *parts["scale"].parameters()], "lr": rates[1]},
        ])
        start, history, changes = 0, [], []
        if resume and checkpoint is not None:
            start, history, changes = _resume(checkpoint, config, parts, optimizer, storage_options)

        bar = tqdm(total=steps, initial=start, desc=f"JBU on {backbone.name}", disable=not progress)
        for step in range(start, steps):
            parts.train()
            for group, rate in zip(optimizer.param_groups, rates, strict=True):
                group["lr"] = scheduled_lr(rate, step, steps, warmup=0) if lr_decay else rate
            torch.manual_seed(step_seed(seed, step))
            g = torch.Generator().manual_seed(step_seed(seed, step))
            indices = _batch_indices(count, batch_size, step, seed)
            batch = torch.stack([_square_image(images[i], image_size) for i in indices.tolist()]).to(device)
            jitters = [sample_jitter(image_size, image_size, max_pad, max_zoom, g)
                       for _ in range(len(indices) * num_jitters)]
            views = apply_jitter(batch.repeat_interleave(num_jitters, 0), jitters)
            dim = backbone.dim
            projection = random_projection(len(jitters), dim, min(projection_dim, dim), generator=g, device=device)
            with torch.no_grad(), gpu_autocast(device):
                features = backbone(backbone.normalize(batch)).float()
                targets = backbone(backbone.normalize(views)).float()
                # The loss sees features in units of their RMS, so the uncertainty net and the saliency are
                # as well conditioned for raw CNN activations (tens) as for layer-normed ViT tokens (~1). The
                # upsampler itself still maps raw features to raw features.
                unit = features.square().mean().sqrt().clamp_min(1e-6)
                targets = targets / unit
            with gpu_autocast(device):
                values, saliency = _upsampled_views(parts, features, batch, projection, num_jitters, unit)
                pooled = pool_views(parts["downsampler"], values, saliency, jitters, grid)
            scale = parts["scale"](targets)
            goal = project(targets, projection)
            loss = gaussian_nll(pooled.float(), goal, scale)
            if crf_weight:
                first_views = values.unflatten(0, (len(indices), num_jitters))[:, 0].float()
                guidance = (batch - _IMAGENET_MEAN.to(batch)) / _IMAGENET_STD.to(batch)
                loss = loss + crf_weight * crf_loss(guidance, first_views, g)
            if consistency_weight or contrast_weight:
                cells, target = _cells_and_targets(values, features / unit, projection, num_jitters)
                if consistency_weight:
                    loss = loss + consistency_weight * _cell_consistency(cells, target)
                if contrast_weight:
                    loss = loss + contrast_weight * _cell_contrast(cells, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if step < warmup_clip_steps:
                torch.nn.utils.clip_grad_norm_(parts.parameters(), 1e-4)
            optimizer.step()

            mse = (pooled.detach().float() - goal).square().mean()
            record = {"step": step + 1, "loss": loss.item(), "mse": mse.item(), "scale": scale.mean().item()}
            if isinstance(parts["upsampler"], JBUStack) and step % 10 == 0:
                # Whether the layers still look at the image: a range kernel of log(d²) nats ignores it.
                upsampler = parts["upsampler"].eval()
                entropies = upsampler.range_entropy(batch[:1], grid)
                record |= {f"range_entropy{k + 1}": e for k, e in enumerate(entropies)}
                record |= {f"range_temp{k + 1}": layer.range_temp.exp().item()
                           for k, layer in enumerate(upsampler.layers)}
                upsampler.train()
            history.append(record)
            if log is not None:
                log(record)
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.4f}")
            done = step + 1
            if checkpoint is not None and (done % checkpoint_every == 0 or done == steps):
                _save_training(checkpoint, config, changes, parts, optimizer, done, history, storage_options)
        bar.close()
    return parts["upsampler"].eval(), history


def _upsampled_views(parts: nn.ModuleDict, features: torch.Tensor, image: torch.Tensor, projection: torch.Tensor,
                     num_jitters: int, unit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Each view's projected high-res features ((B·J)×D×H×W, in RMS units) and their saliency logits (or None).

    The views' projections and the attention saliency's Linear(C→1) (one more column) are applied as one
    matrix product. Its input dropout masks whole channels per image: drawing a mask for every high-res
    value cost a quarter of a training step. A JBU stack with more channels than those columns runs on the
    columns instead (``JBUStack.forward_projected``, exact), so a 1280-channel head never upsamples 1280 maps.
    """
    upsampler, downsampler = parts["upsampler"], parts["downsampler"]
    b, dim = features.shape[:2]
    per_view = projection.view(b, num_jitters, dim, -1)
    d = per_view.shape[-1]
    attention = isinstance(downsampler, AttentionDownsampler)
    columns = per_view.permute(0, 2, 1, 3).flatten(2)  # B×dim×(J·D), view-major like the views
    if attention:
        weight = downsampler.saliency.weight[0].expand(b, dim)
        if downsampler.training and downsampler.dropout.p > 0:
            p = downsampler.dropout.p
            weight = weight * torch.bernoulli(torch.full((b, dim), 1 - p, device=weight.device)) / (1 - p)
        columns = torch.cat([columns, weight[..., None]], 2)
    columns = columns / unit  # the same as dividing the (far larger) upsampled features
    if isinstance(upsampler, JBUStack) and columns.shape[-1] < dim:
        hr = upsampler.forward_projected(features, image, columns)
    else:
        hr = torch.einsum("bchw,bck->bkhw", upsampler(features, image), columns.to(features.dtype))
    if not attention:
        return hr.unflatten(1, (num_jitters, d)).flatten(0, 1), None
    values, logits = hr.split([num_jitters * d, 1], 1)  # a split's backward fills no zeros, unlike slicing
    saliency = (logits + downsampler.saliency.bias).repeat_interleave(num_jitters, 0)
    return values.unflatten(1, (num_jitters, d)).flatten(0, 1), saliency


def _freeze_layer_fixups(upsampler: nn.Module) -> None:
    """Zero each JBU layer's tap correction and keep it there (``train_jbu(layer_fixups=False)``)."""
    if not isinstance(upsampler, JBUStack):
        raise ValueError(f"layer_fixups=False needs a JBUStack, got {type(upsampler).__name__}")
    for layer in upsampler.layers:
        correction = layer.fixup_proj[-1]
        with torch.no_grad():
            correction.weight.zero_()
            correction.bias.zero_()
        correction.requires_grad_(False)


def _cells_and_targets(values: torch.Tensor, features: torch.Tensor, projection: torch.Tensor,
                       num_jitters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The (B·J)×D×H×W projected high-res views pooled onto the B×C×h×w features' grid, and those features projected."""
    pooled = F.adaptive_avg_pool2d(values.float(), features.shape[-2:])
    return pooled, project(features.repeat_interleave(num_jitters, 0), projection)


def _cell_consistency(cells: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE between the pooled views and the projected features (``_cells_and_targets``)."""
    return (cells - target).square().mean()


def _cell_contrast(cells: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared log ratio of each map's spatial spread: the pooled views' over the projected features'."""
    spread = cells.flatten(2).std(-1).clamp_min(1e-6).log()
    return (spread - target.flatten(2).std(-1).clamp_min(1e-6).log()).square().mean()


def _batch_indices(count: int, batch_size: int, step: int, seed: int) -> torch.Tensor:
    """Indices of a step's batch: epochs are seeded permutations, so any step's batch is known without replay."""
    per_epoch = max(1, count // batch_size)
    epoch, offset = divmod(step, per_epoch)
    order = torch.randperm(count, generator=torch.Generator().manual_seed(step_seed(seed, -1 - epoch)))
    if count < batch_size:
        return order.repeat((batch_size + count - 1) // count)[:batch_size]
    return order[offset * batch_size:(offset + 1) * batch_size]


def _save_training(checkpoint: str | os.PathLike, config: dict, changes: list[dict], parts: nn.ModuleDict,
                   optimizer: torch.optim.Optimizer, step: int, history: list[dict[str, float]],
                   storage_options: Mapping[str, Any] | None) -> None:
    upsampler = parts["upsampler"]
    meta = {"backbone": config["backbone"], "step": step, "training": config}
    if changes:
        meta["training_changes"] = changes
    save_checkpoint(checkpoint, upsampler, meta, storage_options=storage_options)
    param_groups = [{k: v for k, v in group.items()} for group in optimizer.state_dict()["param_groups"]]
    save_checkpoint(training_state_path(checkpoint), _Tensors(_training_state(parts, optimizer)),
                    {"step": step, "config": config, "changes": changes, "history": history,
                     "param_groups": param_groups},
                    storage_options=storage_options)


# Settings a resumed run may change: they weigh the loss and shape no parameter or optimizer state, so a run can
# go on from where it is with a new balance (recorded in the checkpoint's "training_changes").
_LOSS_WEIGHTS = ("crf_weight", "consistency_weight", "contrast_weight")


def _resume(checkpoint: str | os.PathLike, config: dict, parts: nn.ModuleDict, optimizer: torch.optim.Optimizer,
            storage_options: Mapping[str, Any] | None) -> tuple[int, list[dict[str, float]], list[dict]]:
    path = training_state_path(checkpoint)
    try:
        tensors, metadata = load_checkpoint(path, storage_options=storage_options)
    except FileNotFoundError:
        return 0, [], []
    saved = metadata.get("config", {})
    changed = sorted(k for k in {*config, *saved} if saved.get(k) != config.get(k))
    fixed = [k for k in changed if k not in _LOSS_WEIGHTS]
    if fixed:
        raise ValueError(f"cannot resume from {path}: it was trained with other settings ({', '.join(fixed)}); "
                         "pass the same settings, or another checkpoint path to start afresh (only the loss weights "
                         f"{', '.join(_LOSS_WEIGHTS)} may change when resuming)")
    _restore_training_state(tensors, metadata["param_groups"], parts, optimizer)
    step = int(metadata["step"])
    changes = [dict(c) for c in metadata.get("changes", [])]
    if changed:
        changes.append({"step": step} | {k: [saved.get(k, 0.0), config.get(k, 0.0)] for k in changed})
    return step, [dict(r) for r in metadata["history"]], changes
