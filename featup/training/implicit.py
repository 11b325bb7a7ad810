"""Fitting FeatUp's implicit upsampler to one image by multi-view consistency."""

from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from featup.downsamplers import AttentionDownsampler
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
from featup.training._common import (
    LogFn,
    check_backbone,
    device_of,
    gpu_autocast,
    pool_views,
    scheduled_lr,
)
from featup.upsamplers.implicit import ImplicitUpsampler

__all__ = ["fit_implicit"]


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
    check_backbone(backbone)
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
    device = device_of(backbone)
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
                    group["lr"] = scheduled_lr(lr, step, steps, warmup_steps)
            model.train()
            downsampler.train()
            idx = torch.randint(views, (views_per_step,), generator=g)
            target = targets[idx.to(device)]
            projection = None
            if projection_dim is not None and projection_dim < model.proj_dim:
                projection = random_projection(views_per_step, model.proj_dim, projection_dim, generator=g,
                                               device=device)
            with gpu_autocast(device):
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
                pooled = pool_views(downsampler, values, saliency, [jitters[i] for i in idx.tolist()], grid)
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
    with torch.no_grad(), gpu_autocast(image.device):
        for start in tqdm(range(0, len(jitters), batch), desc="featurize views", disable=not progress):
            views = apply_jitter(image, jitters[start:start + batch])
            out.append(backbone(backbone.normalize(views)).float())
    return torch.cat(out)


def _pca(features: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (C,) and top-``dim`` principal directions (dim×C, orthonormal rows) of V×C×h×w features' pixels."""
    mean, components, _ = principal_directions(features.permute(0, 2, 3, 1).reshape(-1, features.shape[1]), dim)
    return mean.to(features.dtype), components.to(features.dtype)
