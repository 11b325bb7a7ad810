"""Training FeatUp's upsamplers by multi-view consistency: the JBU stack over a dataset, the implicit model per image.

Both loops jitter the image, run the frozen backbone on every view, jitter the high-res features the
same way, pool them with a learned downsampler onto the backbone's grid and score them against the
view's features with the uncertainty-weighted Gaussian likelihood (``featup.losses``).

Speed, without changing the objective:

- every linear step after the upsampler (projection, jitter, blur, attention pooling) commutes with
  the others, so features are projected to the loss's random 30-d subspaces BEFORE jittering and
  pooling, and the attention downsampler's saliency logits (computed once from the full features)
  are jittered alongside: a 384-channel backbone's views cost what 31 channels cost;
- all views of a step go through the backbone, the jitter (one ``grid_sample``) and the downsampler
  as one batch, and the upsampler runs once per step rather than once per view;
- implicit fitting featurises a pool of jittered views once and draws batches from it; its default
  recipe takes fewer steps at a higher learning rate with a cosine decay (docs/benchmarks.md has the
  comparison with the published one); on a GPU both loops run under bfloat16 autocast.

Every random draw comes from ``seed``: a step's draws (batch, jitters, projections, dropout) depend only
on ``(seed, step)``, so a resumed run continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from featup.checkpoints import load_checkpoint, save_checkpoint
from featup.downsamplers import AttentionDownsampler, SimpleDownsampler
from featup.jitter import Jitter, apply_jitter, sample_jitter
from featup.losses import (
    UncertaintyScale,
    blur_pin_loss,
    gaussian_nll,
    magnitude,
    magnitude_loss,
    project,
    random_projection,
    total_variation,
)
from featup.pca import principal_directions
from featup.upsamplers import JBUStack, create_upsampler
from featup.upsamplers.implicit import ImplicitUpsampler

__all__ = ["fit_implicit", "training_state_path", "train_jbu"]

LogFn = Callable[[dict[str, float]], None]


def training_state_path(checkpoint: str | os.PathLike) -> str:
    """Where ``train_jbu`` keeps the resumable state (optimizer, downsampler, step) beside ``checkpoint``."""
    return f"{os.fspath(checkpoint)}.state"


def _device_of(module: nn.Module) -> torch.device:
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


def _step_seed(seed: int, step: int) -> int:
    # Distinct, reproducible streams per (seed, step); 2**61 - 1 is prime, keeping seeds in int64 range.
    return (seed * 1_000_003 + step * 7919 + 17) % (2**61 - 1)


def _autocast(device: torch.device):
    # bfloat16 on GPUs only: CPU autocast slows these element-wise-heavy graphs down.
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def _check_backbone(backbone: nn.Module) -> None:
    missing = [name for name in ("normalize", "stride", "dim", "name") if not hasattr(backbone, name)]
    if missing:
        raise TypeError(f"backbone lacks {missing}; pass a featup backbone (featup.backbones.load_backbone) or a "
                        "module with .normalize, .stride, .dim and .name")


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


def _pool_views(downsampler: nn.Module, values: torch.Tensor, saliency: torch.Tensor | None,
                jitters: Sequence[Jitter], grid: tuple[int, int]) -> torch.Tensor:
    """Jitter per-view values (and the saliency logits) and pool them onto the backbone's grid."""
    if saliency is None:
        return downsampler(apply_jitter(values, jitters), grid)
    return downsampler(apply_jitter(values, jitters), grid, saliency=apply_jitter(saliency, jitters))


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
    ``head_lr`` (default ``lr``) is the rate of the downsampler and the uncertainty net, which are linear in
    the backbone's channels: one NAdam step moves their outputs in proportion to the width, so a
    1280-channel head wants a smaller rate than the upsampler's to stay stable.

    With ``checkpoint`` the upsampler is written there every ``checkpoint_every`` steps and at the end
    (load it with ``featup.upsamplers.load_upsampler("jbu", checkpoint=...)``), and the state to resume
    from beside it (``training_state_path``); ``resume=True`` continues from that state when it exists.
    """
    _check_backbone(backbone)
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
    device = _device_of(backbone)
    grid = (image_size // stride, image_size // stride)
    backbone.eval()
    config = {"backbone": getattr(backbone, "id", backbone.name), "image_size": image_size, "batch_size": batch_size,
              "num_jitters": num_jitters, "lr": lr, "downsampler": downsampler, "max_pad": max_pad,
              "max_zoom": max_zoom, "projection_dim": projection_dim, "seed": seed, "lr_decay": lr_decay}
    if lr_decay:
        config["steps"] = steps  # the schedule depends on the run's length
    if head_lr is not None:
        config["head_lr"] = head_lr

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        if upsampler is None:
            upsampler = create_upsampler("jbu", dim=backbone.dim)
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
        start, history = 0, []
        if resume and checkpoint is not None:
            start, history = _resume(checkpoint, config, parts, optimizer, storage_options)

        bar = tqdm(total=steps, initial=start, desc=f"JBU on {backbone.name}", disable=not progress)
        for step in range(start, steps):
            parts.train()
            for group, rate in zip(optimizer.param_groups, rates, strict=True):
                group["lr"] = _scheduled_lr(rate, step, steps, warmup=0) if lr_decay else rate
            torch.manual_seed(_step_seed(seed, step))
            g = torch.Generator().manual_seed(_step_seed(seed, step))
            indices = _batch_indices(count, batch_size, step, seed)
            batch = torch.stack([_square_image(images[i], image_size) for i in indices.tolist()]).to(device)
            jitters = [sample_jitter(image_size, image_size, max_pad, max_zoom, g)
                       for _ in range(len(indices) * num_jitters)]
            views = apply_jitter(batch.repeat_interleave(num_jitters, 0), jitters)
            dim = backbone.dim
            projection = random_projection(len(jitters), dim, min(projection_dim, dim), generator=g, device=device)
            with torch.no_grad(), _autocast(device):
                features = backbone(backbone.normalize(batch)).float()
                targets = backbone(backbone.normalize(views)).float()
                # The loss sees features in units of their RMS, so the uncertainty net and the saliency are
                # as well conditioned for raw CNN activations (tens) as for layer-normed ViT tokens (~1). The
                # upsampler itself still maps raw features to raw features.
                unit = features.square().mean().sqrt().clamp_min(1e-6)
                targets = targets / unit
            with _autocast(device):
                values, saliency = _upsampled_views(parts, features, batch, projection, num_jitters, unit)
                pooled = _pool_views(parts["downsampler"], values, saliency, jitters, grid)
            scale = parts["scale"](targets)
            goal = project(targets, projection)
            loss = gaussian_nll(pooled.float(), goal, scale)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if step < warmup_clip_steps:
                torch.nn.utils.clip_grad_norm_(parts.parameters(), 1e-4)
            optimizer.step()

            mse = (pooled.detach().float() - goal).square().mean()
            record = {"step": step + 1, "loss": loss.item(), "mse": mse.item(), "scale": scale.mean().item()}
            history.append(record)
            if log is not None:
                log(record)
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.4f}")
            done = step + 1
            if checkpoint is not None and (done % checkpoint_every == 0 or done == steps):
                _save_training(checkpoint, config, parts, optimizer, done, history, storage_options)
        bar.close()
    return parts["upsampler"].eval(), history


def _upsampled_views(parts: nn.ModuleDict, features: torch.Tensor, image: torch.Tensor, projection: torch.Tensor,
                     num_jitters: int, unit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Each view's projected high-res features ((B·J)×D×H×W, in RMS units) and their saliency logits (or None).

    A JBU stack with more channels than the views' projections need runs on the projections instead
    (``JBUStack.forward_projected``, exact): the attention saliency's Linear(C→1) rides along as one more
    column, its input dropout then masking whole channels per image instead of single values.
    """
    upsampler, downsampler = parts["upsampler"], parts["downsampler"]
    b, dim = features.shape[:2]
    per_view = projection.view(b, num_jitters, dim, -1)
    d = per_view.shape[-1]
    attention = isinstance(downsampler, AttentionDownsampler)
    if not (isinstance(upsampler, JBUStack) and num_jitters * d + attention < dim):
        hr = upsampler(features, image) / unit
        values = torch.einsum("bchw,bjcd->bjdhw", hr, per_view).flatten(0, 1)
        saliency = downsampler.saliency_logits(hr).repeat_interleave(num_jitters, 0) if attention else None
        return values, saliency
    columns = per_view.permute(0, 2, 1, 3).flatten(2)  # B×dim×(J·D), view-major like the views
    if attention:
        weight = downsampler.saliency.weight[0].expand(b, dim)
        if downsampler.training and downsampler.dropout.p > 0:
            p = downsampler.dropout.p
            weight = weight * torch.bernoulli(torch.full((b, dim), 1 - p, device=weight.device)) / (1 - p)
        columns = torch.cat([columns, weight[..., None]], 2)
    hr = upsampler.forward_projected(features, image, columns) / unit
    values = hr[:, :num_jitters * d].unflatten(1, (num_jitters, d)).flatten(0, 1)
    saliency = None
    if attention:
        saliency = (hr[:, -1:] + downsampler.saliency.bias).repeat_interleave(num_jitters, 0)
    return values, saliency


def _batch_indices(count: int, batch_size: int, step: int, seed: int) -> torch.Tensor:
    """Indices of a step's batch: epochs are seeded permutations, so any step's batch is known without replay."""
    per_epoch = max(1, count // batch_size)
    epoch, offset = divmod(step, per_epoch)
    order = torch.randperm(count, generator=torch.Generator().manual_seed(_step_seed(seed, -1 - epoch)))
    if count < batch_size:
        return order.repeat((batch_size + count - 1) // count)[:batch_size]
    return order[offset * batch_size:(offset + 1) * batch_size]


def _save_training(checkpoint: str | os.PathLike, config: dict, parts: nn.ModuleDict,
                   optimizer: torch.optim.Optimizer, step: int, history: list[dict[str, float]],
                   storage_options: Mapping[str, Any] | None) -> None:
    upsampler = parts["upsampler"]
    save_checkpoint(checkpoint, upsampler, {"backbone": config["backbone"], "step": step, "training": config},
                    storage_options=storage_options)
    param_groups = [{k: v for k, v in group.items()} for group in optimizer.state_dict()["param_groups"]]
    save_checkpoint(training_state_path(checkpoint), _Tensors(_training_state(parts, optimizer)),
                    {"step": step, "config": config, "history": history, "param_groups": param_groups},
                    storage_options=storage_options)


def _resume(checkpoint: str | os.PathLike, config: dict, parts: nn.ModuleDict, optimizer: torch.optim.Optimizer,
            storage_options: Mapping[str, Any] | None) -> tuple[int, list[dict[str, float]]]:
    path = training_state_path(checkpoint)
    try:
        tensors, metadata = load_checkpoint(path, storage_options=storage_options)
    except FileNotFoundError:
        return 0, []
    if metadata.get("config") != config:
        changed = sorted(k for k in config if metadata.get("config", {}).get(k) != config[k])
        raise ValueError(f"cannot resume from {path}: it was trained with other settings ({', '.join(changed)}); "
                         "pass the same settings, or another checkpoint path to start afresh")
    _restore_training_state(tensors, metadata["param_groups"], parts, optimizer)
    return int(metadata["step"]), [dict(r) for r in metadata["history"]]


def fit_implicit(
    image: torch.Tensor,
    backbone: nn.Module,
    *,
    steps: int = 200,
    views: int = 256,
    views_per_step: int = 10,
    lr: float = 2e-2,
    warmup_steps: int = 20,
    max_pad: int = 30,
    max_zoom: float = 1.8,
    proj_dim: int = 128,
    projection_dim: int | None = None,
    pca_views: int = 50,
    magnitude_weight: float = 0.001,
    tv_weight: float = 0.05,
    blur_pin_weight: float = 0.1,
    lr_decay: bool = True,
    windows: str = "centred",
    featurize_batch: int = 64,
    seed: int = 0,
    progress: bool = True,
    log: LogFn | None = None,
) -> ImplicitUpsampler:
    """Fit an implicit upsampler to one 3×H×W (or 1×3×H×W) image in 0..1 for a frozen backbone.

    Objective as published: uncertainty-weighted likelihood in a ``proj_dim``-d PCA space of the
    features (fitted on the first ``pca_views`` views), attention downsampler with overlapping windows,
    plus 0.001·magnitude + 0.05·TV of the magnitude map + 0.1·blur-pin. ``projection_dim`` compares
    prediction and target through random per-view projections (cheaper for the 128-d space).

    Recipe: the published one is ``steps=1200, views=3000, lr=2e-3, lr_decay=False,
    windows="published"`` (about a minute per image on an A100). featup's default featurises a pool
    of 256 jittered views once and takes 200 steps at a 10× higher peak rate (20-step warm-up, cosine
    decay), with windows centred on the backbone's patches (``"centred"``: stride = patch, width
    2·patch − 2) instead of the published layout (width 2·patch − 3 at stride patch − 1, whose centres
    drift up to 6.5 px off the patches at 224 px). ``bench/synthetic.py --recipes`` runs the two recipes
    side by side on the synthetic task (quality, training MSE and time per image). Fitting happens in units
    of the PCA coefficients' RMS, so the MLP and the uncertainty net start near their targets' scale.
    """
    _check_backbone(backbone)
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[:2] != (1, 3) or not image.is_floating_point():
        raise ValueError(f"expected one 3×H×W float image in 0..1, got {image.dtype} {tuple(image.shape)}")
    stride = backbone.stride
    h, w = image.shape[-2:]
    if h % stride or w % stride:
        raise ValueError(f"image size {h}×{w} is not divisible by the backbone's stride {stride}; resize it first "
                         "(featup.backbones.resize_to_stride)")
    if windows not in ("centred", "published"):
        raise ValueError(f"unknown windows {windows!r}; choose 'centred' or 'published'")
    if steps < 0 or views < 1 or views_per_step < 1:
        raise ValueError(f"got steps={steps}, views={views}, views_per_step={views_per_step}; expected steps >= 0 "
                         "and at least one view")
    device = _device_of(backbone)
    grid = (h // stride, w // stride)
    backbone.eval()
    g = torch.Generator().manual_seed(seed)

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        model = ImplicitUpsampler(backbone.dim, (h, w), proj_dim=proj_dim).to(device)
        model.set_image(image.to(device))
        source = model.fitted_image()
        jitters = [sample_jitter(h, w, max_pad, max_zoom, g) for _ in range(views)]
        targets = _featurize_views(backbone, source, jitters, featurize_batch, progress)
        mean, components = _pca(targets[:pca_views], model.proj_dim)
        model.set_pca(mean, components)
        coefficients = model.to_pca(targets)
        # Fit in units of the coefficients' RMS: raw CNN activations reach tens, which would leave the
        # MLP's output layer and the uncertainty net far from their scale at initialisation.
        unit = coefficients[:pca_views].square().mean().sqrt().clamp_min(1e-6)
        model.set_pca(mean, components, unit)
        targets = coefficients / unit

        downsampler = _implicit_downsampler(windows, model.proj_dim + 1, stride).to(device)
        scale_net = UncertaintyScale(model.proj_dim).to(device)
        params = [*model.parameters(), *downsampler.parameters(), *scale_net.parameters()]
        optimizer = torch.optim.NAdam(params, lr=lr)

        for step in tqdm(range(steps), desc="implicit fit", disable=not progress):
            if lr_decay:
                for group in optimizer.param_groups:
                    group["lr"] = _scheduled_lr(lr, step, steps, warmup_steps)
            model.train()
            downsampler.train()
            idx = torch.randint(views, (views_per_step,), generator=g)
            target = targets[idx.to(device)]
            projection = None
            if projection_dim is not None and projection_dim < model.proj_dim:
                projection = random_projection(views_per_step, model.proj_dim, projection_dim, generator=g,
                                               device=device)
            with _autocast(device):
                hr = model.render()
                hr_mag = magnitude(hr.float())
                both = torch.cat([hr_mag, hr.float()], 1)
                saliency = downsampler.saliency_logits(both)
                if projection is None:
                    values = both
                else:
                    values = torch.cat([hr_mag.expand(views_per_step, -1, -1, -1),
                                        torch.einsum("chw,ncd->ndhw", hr[0].float(), projection)], 1)
                    saliency = saliency.expand(views_per_step, -1, -1, -1)
                pooled = _pool_views(downsampler, values, saliency, [jitters[i] for i in idx.tolist()], grid)
            pooled = pooled.float()
            scale = scale_net(target)
            goal = target if projection is None else project(target, projection)
            reconstruction = gaussian_nll(pooled[:, 1:], goal, scale)
            loss = (reconstruction + magnitude_weight * magnitude_loss(pooled[:, :1], target)
                    + tv_weight * total_variation(hr_mag) + blur_pin_weight * blur_pin_loss(hr.float()))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

            if log is not None:
                mse = (pooled[:, 1:].detach() - goal).square().mean()
                log({"step": step + 1, "loss": loss.item(), "reconstruction": reconstruction.item(),
                     "mse": mse.item(), "scale": scale.mean().item()})
    model.upsampler_cfg = {"upsampler": "implicit", "dim": backbone.dim, "backbone": backbone.name}
    return model.eval()


def _scheduled_lr(peak: float, step: int, steps: int, warmup: int) -> float:
    """Learning rate at ``step`` of ``steps``: linear warm-up to ``peak`` over ``warmup`` steps, then a cosine to 0."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(steps - warmup, 1)))


def _implicit_downsampler(windows: str, dim: int, stride: int) -> AttentionDownsampler:
    """Overlapping attention windows about two patches wide: the published layout, or one centred on the patches."""
    if windows == "published":
        # 29 px at stride 15 for patch 16: tiles 224 px exactly, window centres drift up to 6.5 px off the patches'.
        return AttentionDownsampler(dim, max(2 * stride - 3, 1), max(stride - 1, 1))
    padding = max(stride // 2 - 1, 0)
    return AttentionDownsampler(dim, stride + 2 * padding, stride, padding=padding)


def _featurize_views(backbone: nn.Module, image: torch.Tensor, jitters: list[Jitter], batch: int,
                     progress: bool) -> torch.Tensor:
    """Backbone features V×C×h×w of every jittered view of a 1×3×H×W image, in batches, without gradients."""
    out = []
    with torch.no_grad(), _autocast(image.device):
        for start in tqdm(range(0, len(jitters), batch), desc="featurize views", disable=not progress):
            views = apply_jitter(image, jitters[start:start + batch])
            out.append(backbone(backbone.normalize(views)).float())
    return torch.cat(out)


def _pca(features: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (C,) and top-``dim`` principal directions (dim×C, orthonormal rows) of V×C×h×w features' pixels."""
    mean, components, _ = principal_directions(features.permute(0, 2, 3, 1).reshape(-1, features.shape[1]), dim)
    return mean.to(features.dtype), components.to(features.dtype)
