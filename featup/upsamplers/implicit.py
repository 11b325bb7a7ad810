"""FeatUp's implicit upsampler: an MLP over Fourier features of (y, x, r, g, b), fitted to ONE image.

The model holds the image it was fitted to (as uint8), the per-channel colour range used to scale it
to [-0.5, 0.5], and a PCA basis of the backbone's features: the MLP predicts features in that (at most
128-d) PCA space and the basis maps them back to the backbone's C channels. It renders its image's
features at any size; a saved model is about half a megabyte. ``featup.training.fit_implicit`` fits one.

With ``base_grid`` the model is residual: it also holds the backbone's own low-res features of the
image (in PCA units) and renders ``upsample(base) + MLP``, so a fit starts from a classical upsampling
that keeps the features' meaning and the MLP only learns the correction (featup's default recipe);
without it, the published model. ``base_mode`` picks the upsampling: ``"bilinear"``; ``"bilateral"``, the
registry's classical joint bilateral filter (``guide`` holds its ``spatial_sigma`` and ``colour_sigma``); or
``"guided"``: joint bilateral upsampling (Kopf et al. 2007; every pixel mixes the low-res cells around it by
distance and by how close its colour is to theirs), optionally in stages (a first ``step``× upsampling, then
doublings guided by the image at each size) and with back-projection (the part that average pooling back onto
the grid loses is upsampled the same way and added, ``iterations`` times).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from featup.checkpoints import load_checkpoint, save_checkpoint
from featup.upsamplers._inputs import resolve_output_size
from featup.upsamplers._registry import register_upsampler
from featup.upsamplers.bilateral import JointBilateral

__all__ = ["ChannelDropout", "ImplicitUpsampler", "guided_upsample"]

BASE_MODES = ("bilinear", "guided", "bilateral")

# Pixels rendered per chunk without autograd: bounds the 303-channel Fourier features at large sizes.
_CHUNK_PIXELS = 1 << 18


class ChannelDropout(nn.Module):
    """Dropout2d for channels-last B×H×W×C maps: zeroes whole channels per sample while training."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = x.new_ones(x.shape[0], *([1] * (x.ndim - 2)), x.shape[-1])
        return x * F.dropout(keep, self.p, training=True)


def guided_upsample(low: torch.Tensor, image: torch.Tensor, *, sigma_spatial: float = 0.8,
                    sigma_range: float = 0.15, radius: int = 2, iterations: int = 10, step: int | None = None,
                    refine_sigma_spatial: float = 1.5, refine_sigma_range: float = 0.1) -> torch.Tensor:
    """Joint bilateral upsampling of B×C×h×w features to the B×3×H×W image's size (0..1), with back-projection.

    Pixel p takes ``Σ_q k(p, q) low[q] / Σ_q k(p, q)`` over the (2·radius + 1)² low-res cells q around it,
    ``k = exp(-‖u_p - q‖² / (2 σ_s²) - ‖I(p) - Ī(q)‖² / (2 σ_r²))`` with u_p the pixel's position in cell
    units and Ī the image averaged over each cell. With ``step`` the first upsampling goes only ``step``× (to
    cells a few pixels wide) and the rest in doublings, each the same kernel guided by the image at that size,
    with ``refine_sigma_spatial`` (in that stage's cells) and ``refine_sigma_range``: a small cell's mean colour
    is one side of an edge rather than a blend of both, so the features' edges snap onto the photo's (the JBU's
    stacked 2× stages do the same). Then ``iterations`` times: the cells' features minus the upsampled features
    averaged back over each cell are upsampled the same way and added.
    """
    if low.ndim != 4 or image.ndim != 4 or image.shape[1] != 3 or image.shape[0] != low.shape[0]:
        raise ValueError(f"expected B×C×h×w features and a B×3×H×W image, got {tuple(low.shape)} and "
                         f"{tuple(image.shape)}")
    if step is not None and step < 2:
        raise ValueError(f"step is the first upsampling's factor: an integer ≥ 2, or None for one step; got {step}")
    b, c, h, w = low.shape
    height, width = image.shape[-2:]
    # The upsampling is linear in the features: a matrix U (H·W × h·w) per image, made by upsampling the
    # identity's h·w one-hot maps stage by stage.
    operator = torch.eye(h * w, device=low.device, dtype=low.dtype).view(1, h * w, h, w).expand(b, -1, -1, -1)
    for stage, size in enumerate(_stage_sizes((h, w), (height, width), step)):
        guide = image if size == (height, width) else F.interpolate(
            image, size=size, mode="bilinear", align_corners=False, antialias=True)
        sigmas = (sigma_spatial, sigma_range) if stage == 0 else (refine_sigma_spatial, refine_sigma_range)
        operator = _guided_stage(operator, guide, *sigmas, radius)
    upsample = operator.flatten(2).transpose(1, 2)  # B×H·W×h·w
    cells = low.flatten(2).transpose(1, 2)  # B×h·w×C
    if iterations:
        # Back-projection is linear too: out = U · Σ_k (I − P·U)^k · low, with P the average pooling onto the cells.
        pooled = F.adaptive_avg_pool2d(upsample.transpose(1, 2).reshape(b * h * w, 1, height, width), (h, w))
        eye = torch.eye(h * w, device=low.device, dtype=low.dtype)
        residual = eye - pooled.view(b, h * w, h * w).transpose(1, 2)
        total = term = eye.expand(b, -1, -1)
        for _ in range(iterations):
            term = residual @ term
            total = total + term
        cells = total @ cells
    out = upsample @ cells  # B×H·W×C
    return out.transpose(1, 2).reshape(b, c, height, width)


def _stage_sizes(low: tuple[int, int], high: tuple[int, int], step: int | None) -> list[tuple[int, int]]:
    """Sizes a staged upsampling passes through: ``low`` × step, then doublings, capped at ``high``."""
    if step is None:
        return [high]
    size = (min(low[0] * step, high[0]), min(low[1] * step, high[1]))
    sizes = [size]
    while size != high:
        size = (min(size[0] * 2, high[0]), min(size[1] * 2, high[1]))
        sizes.append(size)
    return sizes


def _guided_stage(low: torch.Tensor, image: torch.Tensor, sigma_spatial: float, sigma_range: float,
                  radius: int) -> torch.Tensor:
    """One joint bilateral upsampling of B×K×h×w maps to the B×3×H×W guide's size (``guided_upsample``'s kernel)."""
    b, k, h, w = low.shape
    height, width = image.shape[-2:]
    cells = F.adaptive_avg_pool2d(image, (h, w))
    uy = (torch.arange(height, device=low.device, dtype=low.dtype) + 0.5) * h / height - 0.5
    ux = (torch.arange(width, device=low.device, dtype=low.dtype) + 0.5) * w / width - 0.5
    cy, cx = uy.round().clamp(0, h - 1).long(), ux.round().clamp(0, w - 1).long()
    logits, columns = [], []
    for dy in range(-radius, radius + 1):
        qy = cy + dy
        for dx in range(-radius, radius + 1):
            qx = cx + dx
            inside = ((qy >= 0) & (qy < h))[:, None] & ((qx >= 0) & (qx < w))[None]
            qy_, qx_ = qy.clamp(0, h - 1), qx.clamp(0, w - 1)
            spatial = -((uy - qy)[:, None].square() + (ux - qx)[None].square()) / (2 * sigma_spatial**2)
            colour = (image - cells[:, :, qy_][:, :, :, qx_]).square().sum(1)
            logits.append((spatial - colour / (2 * sigma_range**2)).masked_fill(~inside, float("-inf")))  # B×H×W
            columns.append((qy_[:, None] * w + qx_[None]).flatten())
    # Normalised in log space: a pixel whose colour is far from every nearby cell's would underflow to all-zero
    # weights (and zero features) as a ratio of exponentials.
    weights = torch.softmax(torch.stack(logits, -1), -1).reshape(b, height * width, -1)  # B×H·W×taps
    # Each output pixel is a weighted sum of (2·radius + 1)² cells' rows: an embedding bag.
    columns = torch.stack(columns, -1)  # H·W×taps
    flat = low.flatten(2).transpose(1, 2)  # B×h·w×K
    out = torch.stack([F.embedding_bag(columns, flat[i], per_sample_weights=weights[i], mode="sum")
                       for i in range(b)])
    return out.transpose(1, 2).reshape(b, k, height, width)


class ImplicitUpsampler(nn.Module):
    """Per-image implicit feature field: Fourier features of (y, x, rgb) → MLP → PCA space → C channels."""

    def __init__(self, dim: int, image_size: Sequence[int] = (224, 224), *, proj_dim: int = 128,
                 n_freqs: int = 30, hidden_dim: int = 128, dropout: float = 0.2, min_log_freq: float = -2.0,
                 max_log_freq: float = 10.0, base_grid: Sequence[int] | None = None, base_mode: str = "bilinear",
                 guide: dict | None = None):
        super().__init__()
        self.dim = dim
        self.proj_dim = min(proj_dim, dim)
        self.n_freqs = n_freqs
        self.min_log_freq = float(min_log_freq)
        self.max_log_freq = float(max_log_freq)
        height, width = (int(s) for s in image_size)
        self.base_grid = None if base_grid is None else (int(base_grid[0]), int(base_grid[1]))
        if base_mode not in BASE_MODES:
            raise ValueError(f"unknown base_mode {base_mode!r}; choose one of {BASE_MODES}")
        self.base_mode = base_mode
        self.guide = dict(guide or {})
        if self.base_grid is not None:
            # The backbone's low-res features in PCA units: rendered bilinearly under the MLP's correction.
            self.register_buffer("base", torch.zeros(1, self.proj_dim, *self.base_grid))
        in_dim = 2 * 5 * n_freqs + 3
        self.register_buffer("image", torch.zeros(1, 3, height, width, dtype=torch.uint8))
        self.register_buffer("color_min", torch.zeros(3))
        self.register_buffer("color_max", torch.ones(3))
        self.register_buffer("pca_mean", torch.zeros(dim))
        self.register_buffer("pca_components", torch.eye(self.proj_dim, dim))
        # PCA coefficients are kept in units of this scale so the MLP's outputs are ~1 whatever the backbone.
        self.register_buffer("pca_scale", torch.ones(()))
        # Learned phases of the sin and cos features, one per (frequency, input channel).
        self.phases = nn.Parameter(torch.randn(2, n_freqs, 5))
        # The published 1×1-conv MLP run channels-last, so its layers are plain matrix products:
        # LayerNorm is the channel norm, ChannelDropout is Dropout2d.
        self.net = nn.Sequential(
            nn.LayerNorm(in_dim),
            ChannelDropout(dropout),
            nn.Linear(in_dim, hidden_dim),
            nn.ReLU(),
            ChannelDropout(dropout),
            nn.LayerNorm(hidden_dim),
            nn.Linear(hidden_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, self.proj_dim),
        )

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the fitted image."""
        return int(self.image.shape[-2]), int(self.image.shape[-1])

    def set_image(self, image: torch.Tensor) -> None:
        """Store the 1×3×H×W (0..1) image to fit, quantised to uint8, and its per-channel colour range."""
        if image.ndim != 4 or image.shape[:2] != (1, 3) or tuple(image.shape[-2:]) != self.image_size:
            raise ValueError(f"expected a 1×3×{self.image_size[0]}×{self.image_size[1]} image, "
                             f"got shape {tuple(image.shape)}")
        quantised = (image.detach().clamp(0, 1) * 255).round().to(torch.uint8)
        self.image.copy_(quantised)
        colors = self.fitted_image().flatten(2)[0]
        self.color_min.copy_(colors.min(1).values)
        self.color_max.copy_(colors.max(1).values)

    def set_pca(self, mean: torch.Tensor, components: torch.Tensor, scale: float | torch.Tensor = 1.0) -> None:
        """Set the feature PCA: mean (C,), orthonormal rows components (proj_dim×C) and the coefficients' unit."""
        if mean.shape != self.pca_mean.shape or components.shape != self.pca_components.shape:
            raise ValueError(f"expected a PCA mean of shape {tuple(self.pca_mean.shape)} and components of shape "
                             f"{tuple(self.pca_components.shape)}, got {tuple(mean.shape)} and {tuple(components.shape)}")
        self.pca_mean.copy_(mean)
        self.pca_components.copy_(components)
        self.pca_scale.fill_(float(scale))

    def fitted_image(self) -> torch.Tensor:
        """The stored image as 1×3×H×W floats in 0..1."""
        return self.image.to(self.pca_mean.dtype) / 255

    def to_pca(self, features: torch.Tensor) -> torch.Tensor:
        """Project B×C×h×w backbone features into the model's PCA space (B×proj_dim×h×w)."""
        centred = features - self.pca_mean.to(features.dtype)[None, :, None, None]
        return torch.einsum("bchw,pc->bphw", centred, self.pca_components.to(features.dtype)) / self.pca_scale

    def from_pca(self, reduced: torch.Tensor) -> torch.Tensor:
        """Map B×proj_dim×H×W PCA-space features back to B×C×H×W."""
        out = torch.einsum("bphw,pc->bchw", reduced * self.pca_scale, self.pca_components.to(reduced.dtype))
        return out + self.pca_mean.to(reduced.dtype)[None, :, None, None]

    def fourier_angles(self, image: torch.Tensor, ys: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The phase-free arguments B×H×W×n_freqs×5 of the Fourier features, and the scaled colours B×H×W×3.

        They depend on the image only, so a fit computes their sines and cosines once and adds the learned
        phases by sin(a + φ) = sin a cos φ + cos a sin φ (``featup.training.fit_implicit``).
        """
        b, _, h, w = image.shape
        scale = (self.color_max - self.color_min).clamp_min(1e-4).to(image.dtype)
        rgb = (image.permute(0, 2, 3, 1) - self.color_min.to(image.dtype)) / scale - 0.5  # B×H×W×3
        if ys is None:
            ys = torch.linspace(-1, 1, h, device=image.device, dtype=image.dtype)
        xs = torch.linspace(-1, 1, w, device=image.device, dtype=image.dtype)
        grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), -1)[None].expand(b, -1, -1, -1)
        z = torch.cat([grid, rgb], -1)  # B×H×W×5: y, x, r, g, b
        freqs = torch.exp(torch.linspace(self.min_log_freq, self.max_log_freq, self.n_freqs, device=image.device,
                                         dtype=image.dtype))
        return z[..., None, :] * freqs[:, None], rgb  # B×H×W×n×5

    def fourier_features(self, image: torch.Tensor, ys: torch.Tensor | None = None) -> torch.Tensor:
        """B×H×W×(10·n_freqs + 3), channels last: sin and cos of (y, x, rgb) at exp(linspace(min_log_freq,
        max_log_freq, n)) (published: -2, 10) plus learned phases, then rgb. ``ys`` are the rows' y coordinates
        (default linspace(-1, 1, H)).
        """
        angles, rgb = self.fourier_angles(image, ys)
        phases = self.phases.to(image.dtype)
        sin = torch.sin(angles + phases[0]).flatten(-2)
        cos = torch.cos(angles + phases[1]).flatten(-2)
        return torch.cat([sin, cos, rgb], -1)

    def set_base(self, base: torch.Tensor) -> None:
        """Set the residual model's base: the backbone's 1×proj_dim×h×w low-res features in PCA units."""
        if self.base_grid is None:
            raise ValueError("this implicit upsampler has no base (built without base_grid); it renders the MLP alone")
        if base.shape != self.base.shape:
            raise ValueError(f"expected a base of shape {tuple(self.base.shape)}, got {tuple(base.shape)}")
        self.base.copy_(base)

    def render_base(self, size: Sequence[int]) -> torch.Tensor | None:
        """The base upsampled to ``size`` (1×proj_dim×H×W), or None for the published model."""
        if self.base_grid is None:
            return None
        return self.upsample_base(self.base, size)

    def upsample_base(self, low: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """1×K×h×w low-res maps upsampled to ``size`` the way the base is: bilinear, or guided by the fitted image."""
        if self.base_mode == "bilinear":
            return F.interpolate(low, size=tuple(size), mode="bilinear", align_corners=False)
        image = self.fitted_image().to(low.dtype)
        if tuple(size) != self.image_size:
            image = F.interpolate(image, size=tuple(size), mode="bilinear", align_corners=False,
                                  antialias=size[0] < self.image_size[0] or size[1] < self.image_size[1])
        if self.base_mode == "bilateral":
            return JointBilateral(**self.guide)(low, image)
        return guided_upsample(low, image, **self.guide)

    def _mlp(self, image: torch.Tensor, ys: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(self.fourier_features(image, ys)).permute(0, 3, 1, 2)

    def render(self, output_size: Sequence[int] | None = None) -> torch.Tensor:
        """The fitted image's features in PCA space, 1×proj_dim×H_out×W_out (default: the image's size)."""
        image = self.fitted_image()
        size = self.image_size if output_size is None else (int(output_size[0]), int(output_size[1]))
        if size != self.image_size:
            image = F.interpolate(image, size=size, mode="bilinear", align_corners=False,
                                  antialias=size[0] < self.image_size[0] or size[1] < self.image_size[1])
        if torch.is_grad_enabled() or size[0] * size[1] <= _CHUNK_PIXELS:
            out = self._mlp(image)
        else:
            # The MLP is per pixel (dropout aside, which eval turns off), so row chunks render exactly.
            rows = max(1, _CHUNK_PIXELS // size[1])
            ys = torch.linspace(-1, 1, size[0], device=image.device, dtype=image.dtype)
            out = torch.cat([self._mlp(image[:, :, i:i + rows], ys[i:i + rows]) for i in range(0, size[0], rows)],
                            dim=2)
        base = self.render_base(size)
        return out if base is None else out + base

    def forward(self, features: torch.Tensor | None, image: torch.Tensor | None,
                output_size: int | Sequence[int] | None = None) -> torch.Tensor:
        """Render the fitted image's B×C×H_out×W_out features (default size: ``image``'s, else the fitted one's).

        The model always renders the image it was fitted to, since its Fourier features of colour are too
        sharp to be fed another one; ``image`` only sizes the output. ``features`` (that image's backbone
        features) are checked, and for a model with a base they also supply what its PCA space leaves out.
        """
        if features is not None and features.shape[1] != self.dim:
            raise ValueError(f"got features with {features.shape[1]} channels, expected {self.dim} (the backbone "
                             "this implicit upsampler was fitted for)")
        size = resolve_output_size(output_size, image) if image is not None or output_size is not None \
            else self.image_size
        batch = features.shape[0] if features is not None else image.shape[0] if image is not None else 1
        out = self.from_pca(self.render(size))
        if features is not None and self.base_grid is not None and tuple(features.shape[-2:]) == self.base_grid:
            # The fit lives in proj_dim of the C directions (PCA); what the PCA drops (most of a 1280-channel
            # head's variance) is upsampled by the base's own linear operator, so out = base(features) + MLP's
            # correction exactly and no direction of the backbone's features loses its meaning.
            rest = features[:1] - self.from_pca(self.to_pca(features[:1]))
            out = out + self.upsample_base(rest.to(out.dtype), size)
        return out.expand(batch, -1, -1, -1)

    def save(self, path_or_url: str | os.PathLike, metadata: dict | None = None) -> str:
        """Write the fitted model to a path or fsspec URL (featup checkpoint format); returns its sha256."""
        cfg = {
            "upsampler": "implicit",
            "dim": self.dim,
            "upsampler_kwargs": {"image_size": list(self.image_size), "proj_dim": self.proj_dim,
                                 "n_freqs": self.n_freqs, "hidden_dim": self.net[2].out_features,
                                 "min_log_freq": self.min_log_freq, "max_log_freq": self.max_log_freq,
                                 "base_grid": None if self.base_grid is None else list(self.base_grid),
                                 "base_mode": self.base_mode, "guide": self.guide},
        }
        return save_checkpoint(path_or_url, self, {**cfg, **(metadata or {})})

    @classmethod
    def load(cls, path_or_url: str | os.PathLike) -> ImplicitUpsampler:
        """Read a model written by ``save`` (strictly), in eval mode."""
        state_dict, metadata = load_checkpoint(path_or_url)
        if metadata.get("upsampler") != "implicit":
            raise ValueError(f"{os.fspath(path_or_url)} holds a {metadata.get('upsampler')!r} upsampler, not an "
                             "implicit one; load it with featup.upsamplers.load_upsampler")
        model = cls(metadata["dim"], **metadata.get("upsampler_kwargs", {}))
        model.load_state_dict(state_dict, strict=True)
        model.upsampler_cfg = {k: metadata[k] for k in ("upsampler", "dim", "upsampler_kwargs") if k in metadata}
        return model.eval()


@register_upsampler
def implicit(dim: int, image_size: Sequence[int] = (224, 224), proj_dim: int = 128, n_freqs: int = 30,
             hidden_dim: int = 128, min_log_freq: float = -2.0, max_log_freq: float = 10.0,
             base_grid: Sequence[int] | None = None, base_mode: str = "bilinear",
             guide: dict | None = None) -> ImplicitUpsampler:
    """An unfitted implicit upsampler for ``dim``-channel features; fit it with ``featup.training.fit_implicit``."""
    return ImplicitUpsampler(dim, image_size, proj_dim=proj_dim, n_freqs=n_freqs, hidden_dim=hidden_dim,
                             min_log_freq=min_log_freq, max_log_freq=max_log_freq, base_grid=base_grid,
                             base_mode=base_mode, guide=guide)
