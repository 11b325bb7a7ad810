"""One batched implicit fit: per-image models, view pools and stacked parameters, and the loss of a step by
either engine (``"reference"``: jitter, blur and pool every channel of every view; ``"fast"``: the sparse
products of ``_implicit_views``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from featup.downsamplers import (
    AttentionDownsampler,
    _fit_span,
    _window_sum,
    gaussian_blur,
    window_softmax,
)
from featup.jitter import Jitter, apply_jitter, sample_jitter
from featup.losses import (
    UncertaintyScale,
    blur_pin_loss,
    edge_aware_smoothness,
    gaussian_nll,
    image_edge_weights,
    magnitude_loss,
    project,
    random_projection,
    total_variation,
)
from featup.pca import principal_directions
from featup.training._common import LogFn, gpu_autocast, scheduled_lr
from featup.training._implicit_recipes import ImplicitRecipe
from featup.training._implicit_views import _SparsePool, _ViewOperators
from featup.upsamplers.implicit import ImplicitUpsampler


def _guide(cfg: ImplicitRecipe) -> dict:
    if cfg.base == "bilateral":
        # The classical filter's σs is in its window's units (offsets in linspace(-1, 1)), its σr in colour.
        return {"spatial_sigma": cfg.guide_sigma_spatial, "colour_sigma": cfg.guide_sigma_range}
    return {"sigma_spatial": cfg.guide_sigma_spatial, "sigma_range": cfg.guide_sigma_range,
            "radius": cfg.guide_radius, "iterations": cfg.guide_iterations, "step": cfg.guide_step,
            "refine_sigma_spatial": cfg.guide_refine_sigma_spatial,
            "refine_sigma_range": cfg.guide_refine_sigma_range}


class _BatchFit:
    """The state of one batched fit: per-image models, generators, view pools and stacked parameters."""

    def __init__(self, images: torch.Tensor, backbone: nn.Module, cfg: ImplicitRecipe, seed: int, engine: str,
                 progress: bool):
        self.cfg, self.engine = cfg, engine
        self.device = images.device
        b, _, h, w = images.shape
        self.size = (h, w)
        stride = backbone.stride
        self.grid = (h // stride, w // stride)
        self.generators = [torch.Generator().manual_seed(seed + i) for i in range(b)]
        self.models: list[ImplicitUpsampler] = []
        downsamplers, scale_nets = [], []
        targets, bases, self.jitters = [], [], []
        for i in range(b):
            g = self.generators[i]
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                torch.manual_seed(seed + i)
                model = ImplicitUpsampler(backbone.dim, (h, w), proj_dim=cfg.proj_dim, n_freqs=cfg.n_freqs,
                                          hidden_dim=cfg.hidden_dim, dropout=cfg.dropout,
                                          min_log_freq=cfg.min_log_freq, max_log_freq=cfg.max_log_freq,
                                          base_grid=None if cfg.base is None else self.grid,
                                          base_mode=cfg.base or "bilinear", guide=_guide(cfg)).to(self.device)
                model.set_image(images[i:i + 1])
                source = model.fitted_image()
                jitters = [sample_jitter(h, w, cfg.max_pad, cfg.max_zoom, g) for _ in range(cfg.views)]
                feats = _featurize_views(backbone, source, jitters, cfg.featurize_batch, progress)
                mean, components = _pca(feats[:cfg.pca_views], model.proj_dim)
                model.set_pca(mean, components)
                coefficients = model.to_pca(feats)
                # Fit in units of the coefficients' RMS: raw CNN activations reach tens, which would leave the
                # MLP's output layer and the uncertainty net far from their scale at initialisation.
                unit = coefficients[:cfg.pca_views].square().mean().sqrt().clamp_min(1e-6)
                model.set_pca(mean, components, unit)
                if cfg.base is not None:
                    with torch.no_grad():
                        # The correction starts at zero: step 0 renders the base exactly.
                        model.net[-1].weight.zero_()
                        model.net[-1].bias.zero_()
                    with torch.no_grad(), gpu_autocast(self.device):
                        low = backbone(backbone.normalize(source)).float()
                    model.set_base(model.to_pca(low))
                    bases.append(model.render_base((h, w))[0].permute(1, 2, 0).reshape(h * w, -1))
                downsampler = _implicit_downsampler(cfg.windows, model.proj_dim + 1, stride).to(self.device)
                if cfg.uniform_attention:
                    # Start the attention pooling as a plain (blurred) window average: no feature-driven saliency.
                    with torch.no_grad():
                        downsampler.saliency.weight.zero_()
                        downsampler.saliency.bias.zero_()
                downsamplers.append(downsampler)
                scale_nets.append(UncertaintyScale(model.proj_dim).to(self.device))
            self.models.append(model)
            targets.append(coefficients / unit)
            self.jitters.append(jitters)
        self.targets = torch.stack(targets)  # B×V×P×h×w
        self.base = torch.stack(bases) if bases else None  # B×HW×P
        self.params = _StackedParams(self.models, downsamplers, scale_nets)
        self.window = (downsamplers[0].kernel_size, downsamplers[0].stride, downsamplers[0].padding)
        self._prepare_inputs(images)

    def _prepare_inputs(self, images: torch.Tensor) -> None:
        """Fourier arguments (reference) or their sines and cosines (fast), view operators, edge weights."""
        self.angles, rgbs = [], []
        for model in self.models:
            angles, rgb = model.fourier_angles(model.fitted_image())
            self.angles.append(angles.flatten(-2).flatten(1, 2)[0])  # HW × 5n
            rgbs.append(rgb.flatten(1, 2)[0])
        self.angles = torch.stack(self.angles)
        self.rgb = torch.stack(rgbs)  # B×HW×3
        if not self.cfg.learn_phases:
            self.params.phases.requires_grad_(False)
        self.normalised = None
        if self.engine == "fast":
            self.sin, self.cos = self.angles.sin(), self.angles.cos()
            if not self.cfg.learn_phases:
                # Frozen phases: the first LayerNorm's input, hence its normalised output, is fixed for the fit.
                with torch.no_grad():
                    features = self._features()
                    self.normalised = F.layer_norm(features, features.shape[-1:])
                del self.sin, self.cos, self.angles
            self.ops = [_ViewOperators(jitters, self.size, self.grid, *self.window) for jitters in self.jitters]
            span = (max(o.support[0] for o in self.ops), max(o.support[1] for o in self.ops))
            for ops in self.ops:
                ops.widen(span)
        self.edge_weights = None
        if self.cfg.edge_weight:
            self.edge_weights = image_edge_weights(torch.cat([m.fitted_image() for m in self.models]),
                                                   self.cfg.edge_sigma)

    def run(self, progress: bool, log: LogFn | None) -> None:
        cfg = self.cfg
        optimizer = torch.optim.NAdam(self.params.parameters(), lr=cfg.lr)
        for step in tqdm(range(cfg.steps), desc="implicit fit", disable=not progress):
            if cfg.lr_decay:
                for group in optimizer.param_groups:
                    group["lr"] = scheduled_lr(cfg.lr, step, cfg.steps, cfg.warmup_steps)
            terms = self.loss()
            optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            optimizer.step()
            if log is not None:
                log({"step": step + 1, **{k: float(v.detach()) for k, v in terms.items()}})
        self.params.write_back(self.models)
        for model in self.models:
            model.upsampler_cfg = {"upsampler": "implicit", "dim": model.dim, "recipe": asdict(cfg)}
            model.eval()

    def loss(self) -> dict[str, torch.Tensor]:
        """One step's loss, summed over the images (so each image's gradient is its own fit's)."""
        cfg, p = self.cfg, self.params
        b, (h, w) = len(self.models), self.size
        drop = cfg.dropout
        masks = [_dropout_masks(g, drop, p.w1.shape[1], p.w2.shape[1]) for g in self.generators]
        mask1 = torch.stack([m[0] for m in masks]).to(self.device)
        mask2 = torch.stack([m[1] for m in masks]).to(self.device)
        if self.engine == "fast":
            normalised = self.normalised
            if normalised is None:
                features = self._features()
                normalised = F.layer_norm(features, features.shape[-1:])
            hr = p.render_normalised(normalised, mask1, mask2)
        else:
            hr = p.render(self._features(), mask1, mask2)
        if self.base is not None:
            hr = hr + self.base
        mag = hr.square().sum(-1, keepdim=True).sqrt()  # B×HW×1
        values = torch.cat([mag, hr], -1)  # B×HW×(P+1), channels last
        keep = torch.stack([_keep_mask(g, drop, values.shape[1:]) for g in self.generators]).to(self.device)
        saliency = torch.baddbmm(p.sal_b[:, None, None], values * keep, p.sal_w[:, :, None])  # B×HW×1
        idx = [torch.randint(cfg.views, (cfg.views_per_step,), generator=g) for g in self.generators]
        projection = None
        proj_dim = p.w3.shape[-1]
        if cfg.projection_dim is not None and cfg.projection_dim < proj_dim:
            projection = torch.stack([random_projection(cfg.views_per_step, proj_dim, cfg.projection_dim,
                                                        generator=g, device=self.device) for g in self.generators])
        sal_maps = saliency.view(b, 1, h, w)
        jitters = [self.jitters[i][j] for i in range(b) for j in idx[i].tolist()]
        v = cfg.views_per_step
        sal_views = apply_jitter(sal_maps.repeat_interleave(v, 0), jitters)
        attention = self._attention(sal_views)  # BV×h×w×k×k
        if self.engine == "fast":
            pooled = self._pool_fast(values, attention, idx)  # BV×(P+1)×h×w
            if projection is not None:
                pooled = torch.cat([pooled[:, :1], project(pooled[:, 1:], projection.flatten(0, 1))], 1)
        else:
            pooled = self._pool_reference(values, attention, jitters, projection)
        target = torch.cat([self.targets[i, idx[i].to(self.device)] for i in range(b)])  # BV×P×h×w
        scale = p.scale(target)
        goal = target if projection is None else project(target, projection.flatten(0, 1))
        reconstruction = magnitude_term = 0
        for i in range(b):
            rows = slice(i * v, (i + 1) * v)
            reconstruction = reconstruction + gaussian_nll(pooled[rows, 1:], goal[rows], scale[rows])
            magnitude_term = magnitude_term + magnitude_loss(pooled[rows, :1], target[rows])
        hr_maps = hr.view(b, h, w, -1)
        tv = sum(total_variation(mag[i].view(1, 1, h, w)) for i in range(b))
        loss = reconstruction + cfg.magnitude_weight * magnitude_term + cfg.tv_weight * tv
        if cfg.blur_pin_weight:
            blur_pin = sum(blur_pin_loss(hr_maps[i:i + 1].permute(0, 3, 1, 2)) for i in range(b))
            loss = loss + cfg.blur_pin_weight * blur_pin
        if cfg.edge_weight:
            loss = loss + cfg.edge_weight * edge_aware_smoothness(hr_maps, self.edge_weights)
        mse = (pooled[:, 1:].detach() - goal).square().mean() * b
        return {"loss": loss, "reconstruction": reconstruction, "mse": mse, "scale": scale.mean().detach()}

    def _features(self) -> torch.Tensor:
        """B×HW×(10n + 3) Fourier features with the current phases."""
        phases = self.params.phases.flatten(2)  # B×2×5n
        if self.engine == "fast":
            cos, sin = phases.cos()[:, :, None], phases.sin()[:, :, None]
            return torch.cat([self.sin * cos[:, 0] + self.cos * sin[:, 0],
                              self.cos * cos[:, 1] - self.sin * sin[:, 1], self.rgb], -1)
        return torch.cat([torch.sin(self.angles + phases[:, None, 0]), torch.cos(self.angles + phases[:, None, 1]),
                          self.rgb], -1)

    def _attention(self, saliency: torch.Tensor) -> torch.Tensor:
        """Softmax window weights BV×h×w×k×k from the jittered saliency logits, as AttentionDownsampler does."""
        k, s, pad = self.window
        v = self.cfg.views_per_step
        sal = gaussian_blur(_fit_span(saliency, self.grid, k, s, pad))
        if pad:
            sal = F.pad(sal, [pad] * 4, mode="reflect")
        weight = self.params.att_w.flatten(1).repeat_interleave(v, 0)[:, None, None]
        bias = self.params.att_b.flatten(1).repeat_interleave(v, 0)[:, None, None]
        return window_softmax(sal, k, s, self.grid, weight, bias)

    def _pool_reference(self, values: torch.Tensor, attention: torch.Tensor, jitters: list[Jitter],
                        projection: torch.Tensor | None) -> torch.Tensor:
        """Jitter, fit, blur, pad and window-sum every channel of every view (the straightforward way)."""
        b, (h, w) = len(self.models), self.size
        k, s, pad = self.window
        v = self.cfg.views_per_step
        maps = values.view(b, h, w, -1).permute(0, 3, 1, 2)
        if projection is None:
            maps = maps.repeat_interleave(v, 0)
        else:
            projected = torch.einsum("bchw,bvcd->bvdhw", maps[:, 1:], projection).flatten(0, 1)
            maps = torch.cat([maps[:, :1].repeat_interleave(v, 0), projected], 1)
        features = _fit_span(apply_jitter(maps, jitters), self.grid, k, s, pad)
        m = math.ceil(k / s)
        extra_rows = (self.grid[0] + m - 1) * s - features.shape[-2] - 2 * pad
        extra_cols = (self.grid[1] + m - 1) * s - features.shape[-1] - 2 * pad
        padded = F.pad(gaussian_blur(features), [pad, pad + extra_cols, pad, pad + extra_rows], mode="reflect")
        return _window_sum(padded, attention, s)

    def _pool_fast(self, values: torch.Tensor, attention: torch.Tensor, idx: list[torch.Tensor]) -> torch.Tensor:
        """All views' pooled values as one sparse matrix product with the B·HW×(P+1) rendered map."""
        b, (h, w) = len(self.models), self.size
        gh, gw = self.grid
        rows, row_start, cols, col_start = zip(*(self.ops[i].select(idx[i]) for i in range(b)), strict=True)
        rows, cols = torch.cat(rows).to(values), torch.cat(cols).to(values)  # BV×gh×k×Sy, BV×gw×k×Sx
        # Window (oy, ox)'s weights on the source pixels: rowsᵀ · attention · cols (Sy×Sx per window).
        weights = rows.transpose(-1, -2)[:, :, None] @ (attention @ cols[:, None])  # BV×gh×gw×Sy×Sx
        sy, sx = weights.shape[-2:]
        index = torch.cat([self.ops[i].index(idx[i]) + i * h * w for i in range(b)])
        transposed = [self.ops[i].transposed(j) for i in range(b) for j in idx[i].tolist()]
        pooled = _SparsePool.apply(values.reshape(b * h * w, -1), weights.reshape(-1, sy * sx),
                                   index.reshape(-1, sy * sx).to(self.device), transposed, h * w)
        return pooled.view(-1, gh, gw, values.shape[-1]).permute(0, 3, 1, 2)


class _StackedParams(nn.Module):
    """The B fits' trainable parameters, stacked along a leading batch dimension: MLP, downsampler, scale net."""

    def __init__(self, models: list[ImplicitUpsampler], downsamplers: list[AttentionDownsampler],
                 scale_nets: list[UncertaintyScale]):
        super().__init__()

        def stack(tensors) -> nn.Parameter:
            return nn.Parameter(torch.stack([t.detach() for t in tensors]).clone())

        nets = [m.net for m in models]
        self.phases = stack(m.phases for m in models)  # B×2×n×5
        self.ln1_w, self.ln1_b = stack(n[0].weight for n in nets), stack(n[0].bias for n in nets)
        self.w1, self.b1 = stack(n[2].weight.T for n in nets), stack(n[2].bias for n in nets)
        self.ln2_w, self.ln2_b = stack(n[5].weight for n in nets), stack(n[5].bias for n in nets)
        self.w2, self.b2 = stack(n[6].weight.T for n in nets), stack(n[6].bias for n in nets)
        self.w3, self.b3 = stack(n[8].weight.T for n in nets), stack(n[8].bias for n in nets)
        self.sal_w = stack(d.saliency.weight[0] for d in downsamplers)  # B×(P+1)
        self.sal_b = stack(d.saliency.bias[0] for d in downsamplers)
        self.att_w, self.att_b = stack(d.w for d in downsamplers), stack(d.b for d in downsamplers)
        self.scale_w = stack(s.net.weight.flatten() for s in scale_nets)  # B×P
        self.scale_b = stack(s.net.bias[0] for s in scale_nets)

    def render(self, features: torch.Tensor, mask1: torch.Tensor, mask2: torch.Tensor) -> torch.Tensor:
        """The B MLPs on B×N×(10n + 3) features: LayerNorm, dropout, Linear, ReLU, dropout, LayerNorm, ..."""
        x = F.layer_norm(features, features.shape[-1:]) * self.ln1_w[:, None] + self.ln1_b[:, None]
        x = torch.relu(torch.baddbmm(self.b1[:, None], x * mask1[:, None], self.w1))
        x = x * mask2[:, None]
        x = F.layer_norm(x, x.shape[-1:]) * self.ln2_w[:, None] + self.ln2_b[:, None]
        x = torch.relu(torch.baddbmm(self.b2[:, None], x, self.w2))
        return torch.baddbmm(self.b3[:, None], x, self.w3)

    def render_normalised(self, normalised: torch.Tensor, mask1: torch.Tensor, mask2: torch.Tensor) -> torch.Tensor:
        """``render`` from the first LayerNorm's normalised output, with its affine map and the first dropout folded
        into the first layer's weights (303×128 numbers scaled instead of HW×303)."""
        weight = (self.ln1_w * mask1)[:, :, None] * self.w1
        bias = self.b1 + ((self.ln1_b * mask1)[:, None] @ self.w1)[:, 0]
        x = torch.relu(torch.baddbmm(bias[:, None], normalised, weight))
        if not bool((mask2 == 1).all()):
            x = x * mask2[:, None]
        x = F.layer_norm(x, x.shape[-1:]) * self.ln2_w[:, None] + self.ln2_b[:, None]
        x = torch.relu(torch.baddbmm(self.b2[:, None], x, self.w2))
        return torch.baddbmm(self.b3[:, None], x, self.w3)

    def scale(self, target: torch.Tensor) -> torch.Tensor:
        """UncertaintyScale of each view's target (BV×P×h×w) with its image's weights."""
        v = target.shape[0] // self.scale_w.shape[0]
        logits = torch.einsum("bphw,bp->bhw", target, self.scale_w.repeat_interleave(v, 0))
        logits = logits + self.scale_b.repeat_interleave(v, 0)[:, None, None]
        return torch.exp(logits[:, None] + 0.1).clamp_min(1e-4)

    @torch.no_grad()
    def write_back(self, models: list[ImplicitUpsampler]) -> None:
        for i, model in enumerate(models):
            net = model.net
            model.phases.copy_(self.phases[i])
            net[0].weight.copy_(self.ln1_w[i]), net[0].bias.copy_(self.ln1_b[i])
            net[2].weight.copy_(self.w1[i].T), net[2].bias.copy_(self.b1[i])
            net[5].weight.copy_(self.ln2_w[i]), net[5].bias.copy_(self.ln2_b[i])
            net[6].weight.copy_(self.w2[i].T), net[6].bias.copy_(self.b2[i])
            net[8].weight.copy_(self.w3[i].T), net[8].bias.copy_(self.b3[i])


def _dropout_masks(generator: torch.Generator, p: float, in_dim: int, hidden: int) -> tuple[torch.Tensor, ...]:
    """Channel dropout masks (kept channels scaled by 1 / (1 - p)) of the MLP's two dropout layers."""
    return _keep_mask(generator, p, (in_dim,)), _keep_mask(generator, p, (hidden,))


def _keep_mask(generator: torch.Generator, p: float, shape: Sequence[int]) -> torch.Tensor:
    if p == 0:
        return torch.ones(tuple(shape))
    return (torch.rand(tuple(shape), generator=generator) >= p).float() / (1 - p)


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
