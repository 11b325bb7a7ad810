"""Joint bilateral upsampling (JBU): FeatUp's feed-forward upsampler, a stack of learned image-guided layers.

``JBULayer`` is the published ``JBULearnedRange`` (same parameters, same state-dict layout, so published
checkpoints load 1:1): it upsamples the source bicubically to the guidance's size and filters it with
one d×d kernel per pixel, the product of a learned range kernel (a softmax over the taps of
``τ·⟨q(x+Δp), q(x)⟩`` with ``q`` a learned projection of the guidance) and a Gaussian spatial kernel,
normalised, plus a learned correction ``0.1·fixup_proj([K, G])``.

``JBUStack`` chains ``num_layers`` of them. The published stack doubles the grid at every layer (16× in
all), which misses the image size for most backbones (DINOv2-14 at 224 px gives 256 px). Ours reaches
any output size: stage k of n has size ``round(grid · (output / grid) ** (k / n))`` per axis and the last
stage is exactly the output size, so the scale grows geometrically. A 14×14 grid to 224 over 4 layers
gives the published 28, 56, 112, 224; a 16×16 grid (DINOv2-14) or a 7×7 one (stride-32 ResNet) lands on
224 as well, and each axis of a non-square output is handled on its own. Stages are never smaller than
radius + 1 pixels (reflect padding needs it). Stage k is guided by the ImageNet-normalised image (what
the published checkpoints expect) average-pooled to the stage size, or bilinearly resized where the
stage is larger than the image.

Two departures from the published layer, both optional and both loading the same state dict:

- ``range_kernel="distance"`` scores taps by ``−τ/2·‖q(x+Δp) − q(x)‖²`` instead of ``τ·⟨q(x+Δp), q(x)⟩``.
  Under the softmax over taps the two differ by ``τ/2·‖q(x+Δp)‖²``, a bonus for keys of large norm
  that has nothing to do with similarity: with it a pixel borrows from its brightest neighbours, and the
  only way for training to stop that is to shrink the keys until every tap weighs the same (the
  published stack trained here did exactly that: range entropy 3.85–3.89 nats of a uniform 3.89).
  The distance kernel is the classical joint bilateral filter in a learned colour space.
- ``init_bilateral`` sets the weights so that, in eval mode, the stack IS the classical joint bilateral
  upsampler (``featup.upsamplers.bilateral``): keys are the image's colours over the colour sigma, the
  fixups start at zero. Training then starts from an upsampler that already follows edges.

One step the published stack does not take, optional and outside training: ``back_projection=α`` adds to the
source α times what the output, average-pooled onto the backbone's grid, misses of the backbone's features, and
upsamples again (a back-projection step, Irani & Peleg 1991, with the stack itself as the back-projecting filter:
the layers are linear in the source, so correcting the source corrects the output along the image's edges, where
bilinear back-projection would blur). FeatUp asks of an upsampler that pooling it gives back the features; the
stack learns that only approximately. A full step (α = 1) raises the pooled cosine most but costs depth
probes and CAMs (docs/bench/jbu-training.md, session 9), so it is a dial, off by default.

Where no gradient is wanted and the compiled CPU kernels are built (float32/float64, radius ≤ 4), a layer runs as
one fused pass per block of output rows (``featup.ops.jbu_layer``) that never writes its B×d²×H×W filters; with
autograd, on CUDA or for other dtypes it is composed from ``adaptive_conv``, ``neighbour_products`` and PyTorch
ops. Both give the same outputs, random draws included.

The stack's final 1×1 fixup is applied to the low-resolution features before the layers: the layers are
linear and treat every channel alike, so the result is the same (its Dropout2d mask included) at
``grid`` pixels instead of ``output`` pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from featup.backbones import IMAGENET_MEAN, IMAGENET_STD, Normalize
from featup.ops import adaptive_conv, neighbour_products
from featup.ops.jbu_layer import bicubic_pad, fused_layer_available, jbu_layer_forward
from featup.upsamplers._inputs import check_features_and_image, resolve_output_size
from featup.upsamplers._registry import register_upsampler

__all__ = ["JBULayer", "JBUStack", "guidance_at", "spatial_logits", "stage_sizes"]

RANGE_KERNELS = ("dot", "distance")


def stage_sizes(grid: Sequence[int], output_size: Sequence[int], num_layers: int, radius: int) -> list[tuple[int, int]]:
    """Output size of each of ``num_layers`` stages: geometric growth from ``grid`` to exactly ``output_size``."""
    if min(output_size) <= radius:
        raise ValueError(f"got output_size {tuple(output_size)}, expected both sides larger than the JBU radius {radius}")
    n = num_layers
    sizes = [
        tuple(max(radius + 1, round(g * (o / g) ** (k / n))) for g, o in zip(grid, output_size, strict=True))
        for k in range(1, n)
    ]
    return [*sizes, (int(output_size[0]), int(output_size[1]))]


def spatial_logits(diameter: int, sigma: torch.Tensor | float, *, device=None, dtype=None) -> torch.Tensor:
    """``−‖Δoffset‖² / (2σ²)`` over the d×d taps, offsets in linspace(−1, 1, d): d² values, tap p = i·d + j."""
    sigma = torch.as_tensor(sigma, device=device, dtype=dtype)
    offsets = torch.linspace(-1, 1, diameter, device=sigma.device, dtype=sigma.dtype)
    squared_distance = offsets[:, None].square() + offsets[None, :].square()
    return (-squared_distance / (2 * sigma**2)).reshape(-1)


class JBULayer(nn.Module):
    """One learned joint bilateral upsampling layer: source B×C×h×w, guidance B×g×H×W → B×C×H×W."""

    def __init__(self, guidance_dim: int = 3, key_dim: int = 32, radius: int = 3, range_kernel: str = "dot"):
        super().__init__()
        if radius < 1:
            raise ValueError(f"got radius={radius}, expected at least 1")
        if range_kernel not in RANGE_KERNELS:
            raise ValueError(f"got range_kernel={range_kernel!r}, expected one of {', '.join(RANGE_KERNELS)}")
        self.radius = radius
        self.range_mode = range_kernel
        self.diameter = 2 * radius + 1
        taps = self.diameter**2
        self.range_temp = nn.Parameter(torch.tensor(0.0))
        self.range_proj = nn.Sequential(
            nn.Conv2d(guidance_dim, key_dim, 1),
            nn.GELU(),
            nn.Dropout2d(0.1),
            nn.Conv2d(key_dim, key_dim, 1),
        )
        self.fixup_proj = nn.Sequential(
            nn.Conv2d(taps + guidance_dim, taps, 1),
            nn.GELU(),
            nn.Dropout2d(0.1),
            nn.Conv2d(taps, taps, 1),
        )
        self.sigma_spatial = nn.Parameter(torch.tensor(1.0))

    def range_logits(self, guidance: torch.Tensor) -> torch.Tensor:
        """Temperature-scaled similarity of each tap's key to the pixel's query: B×d²×H×W."""
        queries, keys = self._queries_and_keys(guidance)
        return self._temperature() * neighbour_products(queries, self.radius, keys)

    def _temperature(self) -> torch.Tensor:
        return self.range_temp.exp().clamp(1e-4, 1e4)

    def _queries_and_keys(self, guidance: torch.Tensor, *, batched_matmul: bool = False
                          ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per pixel the query and the key (None: the query itself) whose products are the range logits (before τ).

        ``batched_matmul`` runs the range projection's 1×1 convolutions as batched matrix products, twice as fast
        on the CPU; the differentiable path keeps the convolutions, which round as the published layer does.
        """
        queries = _pointwise_mlp(self.range_proj, guidance) if batched_matmul else self.range_proj(guidance)
        if self.range_mode == "distance":
            # −‖k − q‖²/2 = ⟨k, q⟩ − ‖k‖²/2 − ‖q‖²/2, and the last term is the same for every tap: one product
            # of [q, 1] with the keys [k, −‖k‖²/2].
            ones = torch.ones_like(queries[:, :1])
            keys = torch.cat([queries, -0.5 * queries.square().sum(1, keepdim=True)], 1)
            return torch.cat([queries, ones], 1), keys
        return queries, None

    def range_kernel(self, guidance: torch.Tensor) -> torch.Tensor:
        """Softmax over the d² taps of the range logits: B×d²×H×W."""
        return F.softmax(self.range_logits(guidance), dim=1)

    def spatial_kernel(self) -> torch.Tensor:
        """Gaussian of the tap offsets over linspace(-1, 1, d) in both axes: 1×d²×1×1."""
        return spatial_logits(self.diameter, self.sigma_spatial).exp().reshape(1, -1, 1, 1)

    def filters(self, guidance: torch.Tensor) -> torch.Tensor:
        """The per-pixel d×d filters this layer applies, tap p = i·d + j: B×d²×H×W (signed after the fixup)."""
        # softmax(range)·spatial / Σ is one softmax of range + log spatial: fewer passes over B×d²×H×W.
        logits = self.range_logits(guidance) + spatial_logits(self.diameter, self.sigma_spatial)[:, None, None]
        # Pixel-major (channels-last) from here on, as the compiled range logits already are: the softmax runs over
        # contiguous taps (over dim 1 ATen would copy to NCHW first), ATen's 1×1 convs run faster on it, and the
        # adaptive conv takes the filters pixel by pixel without a transposing copy.
        kernel = F.softmax(logits.permute(0, 2, 3, 1), dim=-1).permute(0, 3, 1, 2)
        guidance = guidance.contiguous(memory_format=torch.channels_last)
        # fixup_proj(cat[K, G]) with its first 1×1 conv split over K and G: no B×(d²+g)×H×W copy.
        first, gelu, dropout, second = self.fixup_proj
        taps = kernel.shape[1]
        hidden = F.conv2d(kernel, first.weight[:, :taps], first.bias) + F.conv2d(guidance, first.weight[:, taps:])
        return kernel + 0.1 * second(dropout(gelu(hidden)))

    @torch.no_grad()
    def init_bilateral(self, colour_sigma: float, spatial_sigma: float, guidance_std: Sequence[float]) -> None:
        """Make this layer (in eval mode, with ``range_kernel="distance"``) the classical joint bilateral filter.

        The guidance is ``(rgb − mean) / guidance_std``; the keys become ``(rgb − mean) / colour_sigma`` through
        the MLP's exact identity ``GELU(h) − GELU(−h) = h``, the temperature 1, the fixup zero. The unused key
        units start small and random so that training can grow them.
        """
        if self.range_mode != "distance":
            raise ValueError("init_bilateral needs range_kernel='distance': the dot-product kernel cannot express it")
        first, _, _, second = self.range_proj
        g = first.in_channels
        if len(guidance_std) != g or first.out_channels < 2 * g or second.out_channels < g:
            raise ValueError(f"init_bilateral needs {g} guidance stds and key_dim >= {2 * g}")
        for conv in (first, second):
            conv.weight.mul_(0.1)
            conv.bias.zero_()
        scale = torch.tensor([s / colour_sigma for s in guidance_std])
        first.weight[: 2 * g] = 0
        first.weight[:g, :, 0, 0] = torch.diag(scale)
        first.weight[g : 2 * g, :, 0, 0] = -torch.diag(scale)
        second.weight[:g] = 0
        second.weight[:, : 2 * g] = 0
        second.weight[:g, :g, 0, 0] = torch.eye(g)
        second.weight[:g, g : 2 * g, 0, 0] = -torch.eye(g)
        self.range_temp.zero_()
        self.sigma_spatial.fill_(spatial_sigma)
        self.fixup_proj[-1].weight.zero_()
        self.fixup_proj[-1].bias.zero_()

    def forward(self, source: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        """Upsample ``source`` to the guidance's size, filtered by kernels computed from ``guidance``."""
        batch, _, height, width = guidance.shape
        if source.shape[0] != batch:
            raise ValueError(f"got {source.shape[0]} sources and {batch} guidance images, expected the same batch")
        if min(height, width) <= self.radius:
            raise ValueError(
                f"got guidance of size {height}×{width}, expected both sides larger than the radius {self.radius}"
            )
        if not self._wants_grad(source, guidance) and source.dtype == guidance.dtype \
                and fused_layer_available(guidance, self.radius):
            return self._fused_forward(source, guidance)
        kernel = self.filters(guidance)
        hr_padded = bicubic_pad(source, (height, width), self.radius)
        per_pixel = kernel.permute(0, 2, 3, 1).reshape(batch, height, width, self.diameter, self.diameter)
        return adaptive_conv(hr_padded, per_pixel)

    def _wants_grad(self, *inputs: torch.Tensor) -> bool:
        if not torch.is_grad_enabled():
            return False
        return any(t.requires_grad for t in inputs) or any(p.requires_grad for p in self.parameters())

    def _fused_forward(self, source: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        """``forward`` without autograd in one compiled pass per output row (``featup.ops.jbu_layer_forward``).

        Same maths and the same random draws (the range projection's, then the fixup's Dropout2d mask) as the
        composed path, so train-mode outputs agree too.
        """
        r = self.radius
        queries, keys = self._queries_and_keys(guidance, batched_matmul=True)
        keys_padded = F.pad(queries if keys is None else keys, [r] * 4, mode="reflect")
        first, _, dropout, second = self.fixup_proj
        batch, taps = guidance.shape[0], self.diameter**2
        return jbu_layer_forward(
            bicubic_pad(source, guidance.shape[-2:], r), queries, keys_padded, guidance,
            spatial_logits(self.diameter, self.sigma_spatial).to(guidance.dtype), float(self._temperature()),
            first.weight.flatten(1), first.bias, second.weight.flatten(1), second.bias,
            _dropout2d_scale(dropout, batch, taps, guidance),
        )


class JBUStack(nn.Module):
    """FeatUp's JBU upsampler: ``num_layers`` JBU layers reaching any output size, then a 1×1 residual fixup."""

    def __init__(self, dim: int, num_layers: int = 4, *, key_dim: int = 32, radius: int = 3,
                 range_kernel: str = "dot", back_projection: float = 0.0):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"got num_layers={num_layers}, expected at least 1")
        if not 0 <= back_projection <= 1:
            raise ValueError(f"got back_projection={back_projection}, expected a step between 0 (none) and 1 (full)")
        self.dim = dim
        self.back_projection = back_projection
        self.num_layers = num_layers
        self.radius = radius
        for k in range(1, num_layers + 1):
            self.add_module(f"up{k}", JBULayer(3, key_dim, radius, range_kernel))
        self.fixup_proj = nn.Sequential(nn.Dropout2d(0.2), nn.Conv2d(dim, dim, 1))
        self.normalize = Normalize(IMAGENET_MEAN, IMAGENET_STD)

    @property
    def layers(self) -> list[JBULayer]:
        """The JBU layers in the order they run (``up1`` first)."""
        return [getattr(self, f"up{k}") for k in range(1, self.num_layers + 1)]

    def stage_sizes(self, grid: Sequence[int], output_size: Sequence[int]) -> list[tuple[int, int]]:
        """Output size of each layer: geometric growth from ``grid`` to exactly ``output_size``."""
        return stage_sizes(grid, output_size, self.num_layers, self.radius)

    @torch.no_grad()
    def init_bilateral(self, colour_sigma: float = 0.05, spatial_sigma: float = 0.35) -> None:
        """Start as the classical joint bilateral upsampler (eval mode): every layer bilateral, the fixup zero.

        ``colour_sigma`` is in units of the 0..1 image, ``spatial_sigma`` in those of the window offsets
        (linspace(−1, 1, d)); the defaults are ``featup.upsamplers.bilateral``'s.
        """
        for layer in self.layers:
            layer.init_bilateral(colour_sigma, spatial_sigma, IMAGENET_STD)
        self.fixup_proj[1].weight.zero_()
        self.fixup_proj[1].bias.zero_()

    @torch.no_grad()
    def range_entropy(self, image: torch.Tensor, grid: Sequence[int],
                      output_size: int | Sequence[int] | None = None) -> list[float]:
        """Mean entropy (nats) of each layer's range kernel over the taps: log(d²) when it ignores the image."""
        guidance = self.normalize(image)
        stages = self.stage_sizes(grid, resolve_output_size(output_size, image))
        entropies = []
        for layer, stage in zip(self.layers, stages, strict=True):
            log_kernel = F.log_softmax(layer.range_logits(guidance_at(guidance, stage)), dim=1)
            entropies.append(float(-(log_kernel.exp() * log_kernel).sum(1).mean()))
        return entropies

    def forward(
        self, features: torch.Tensor, image: torch.Tensor, output_size: int | Sequence[int] | None = None
    ) -> torch.Tensor:
        """B×dim×h×w features guided by the B×3×H×W image in 0..1 → B×dim×H_out×W_out (default: H×W)."""
        check_features_and_image(features, image)
        if features.shape[1] != self.dim:
            raise ValueError(
                f"got features with {features.shape[1]} channels, expected {self.dim} (the dim this JBUStack was "
                "built for)"
            )
        source = features
        if self.back_projection:
            source = features + self.back_projection * (features - self._pooled(features, image, output_size))
        return self._upsample(source, image, output_size)

    def _fixed(self, source: torch.Tensor) -> torch.Tensor:
        # out + 0.1·(W·drop(out) + b) with out = layers(x) equals layers(x + 0.1·W·drop(x)) + 0.1·b: the
        # layers are linear and the same for every channel, so the 1×1 fixup runs on the low-res grid.
        dropout, conv = self.fixup_proj
        return source + 0.1 * F.conv2d(dropout(source), conv.weight)

    def _bias(self, like: torch.Tensor) -> torch.Tensor:
        return 0.1 * self.fixup_proj[1].bias[:, None, None].to(like.dtype)

    def _upsample(self, source: torch.Tensor, image: torch.Tensor,
                  output_size: int | Sequence[int] | None) -> torch.Tensor:
        out = self._run_layers(self._fixed(source), image, output_size)
        # In place: the layers' output is a fresh tensor no backward needs, and this is one pass over the largest one.
        return out.add_(self._bias(out))

    def _pooled(self, source: torch.Tensor, image: torch.Tensor,
                output_size: int | Sequence[int] | None) -> torch.Tensor:
        """``_upsample(source)`` average-pooled onto the source's grid (what back-projection compares)."""
        grid = source.shape[-2:]
        cells = grid[0] * grid[1]
        if cells >= self.dim:
            return F.adaptive_avg_pool2d(self._upsample(source, image, output_size), grid)
        # Wide features (a 1280-channel head on a 7×7 grid): the pooled layers are one cells×cells map per image,
        # the same for every channel, so run the layers on the cells' indicator maps instead of on every channel.
        batch = source.shape[0]
        basis = torch.eye(cells, dtype=source.dtype, device=source.device).view(1, cells, *grid)
        response = self._run_layers(basis.repeat(batch, 1, 1, 1), image, output_size)
        pooled = torch.bmm(self._fixed(source).flatten(2), F.adaptive_avg_pool2d(response, grid).flatten(2))
        return pooled.view_as(source) + self._bias(source)

    def _run_layers(self, features: torch.Tensor, image: torch.Tensor,
                    output_size: int | Sequence[int] | None) -> torch.Tensor:
        size = resolve_output_size(output_size, image)
        guidance = self.normalize(image.to(features.dtype))
        out = features
        for layer, stage_size in zip(self.layers, self.stage_sizes(features.shape[-2:], size), strict=True):
            out = layer(out, guidance_at(guidance, stage_size))
        return out

    def forward_projected(self, features: torch.Tensor, image: torch.Tensor, projection: torch.Tensor,
                          output_size: int | Sequence[int] | None = None) -> torch.Tensor:
        """``einsum("bchw,bcd->bdhw", forward(features, image), projection)`` with the layers run on D channels.

        The JBU layers treat every channel alike and linearly (bicubic resampling, then one adaptive filter
        per pixel from the image), so they commute with channel projections; the residual fixup folds into
        the projection, its Dropout2d mask included. So this is exact in train and eval mode, and costs D
        channels instead of ``dim``: a 1280-channel head trains through its 30-d loss projections.
        ``projection`` is B×dim×D.
        """
        check_features_and_image(features, image)
        if self.back_projection:
            raise ValueError(f"forward_projected trains the layers, and back-projection is an inference step: got "
                             f"back_projection={self.back_projection}, set it to 0 while training")
        b, dim = features.shape[:2]
        if projection.ndim != 3 or projection.shape[:2] != (b, self.dim) or dim != self.dim:
            raise ValueError(f"expected features with {self.dim} channels and a B×{self.dim}×D projection, got "
                             f"features {tuple(features.shape)} and projection {tuple(projection.shape)}")
        dropout, conv = self.fixup_proj
        weight = conv.weight[:, :, 0, 0].to(projection.dtype)
        folded = torch.einsum("oc,bod->bcd", weight, projection)  # Wᵀ·P: the fixup seen through P
        if dropout.training and dropout.p > 0:
            keep = torch.bernoulli(torch.full((b, dim, 1), 1 - dropout.p, device=features.device))
            folded = folded * keep.to(folded.dtype) / (1 - dropout.p)
        reduced = torch.einsum("bchw,bcd->bdhw", features, (projection + 0.1 * folded).to(features.dtype))
        out = self._run_layers(reduced, image, output_size)
        bias = torch.einsum("o,bod->bd", conv.bias.to(projection.dtype), projection)
        return out + 0.1 * bias[:, :, None, None].to(out.dtype)


def _pointwise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """A 1×1 convolution of B×C×H×W as one batched matrix product: ATen's NCHW 1×1 conv reorders its data twice."""
    b, _, h, w = x.shape
    out = torch.baddbmm(bias.view(1, -1, 1), weight.flatten(1).expand(b, -1, -1), x.flatten(2))
    return out.view(b, -1, h, w)


def _pointwise_mlp(mlp: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """``mlp(x)`` for a [Conv1×1, GELU, Dropout2d, Conv1×1] stack, its convolutions as batched matrix products."""
    first, gelu, dropout, second = mlp
    return _pointwise(dropout(gelu(_pointwise(x, first.weight, first.bias))), second.weight, second.bias)


def _dropout2d_scale(dropout: nn.Dropout2d, batch: int, channels: int, like: torch.Tensor) -> torch.Tensor:
    """Dropout2d's B×C multiplier of a B×C×H×W input, drawn as ``F.dropout2d`` draws it (ones when inactive)."""
    if not dropout.training or dropout.p == 0:
        return like.new_ones(batch, channels)
    if dropout.p == 1:
        return like.new_zeros(batch, channels)
    # ATen's feature dropout: bernoulli_(1 − p) on a B×C×1×1 tensor of the input's dtype, divided by 1 − p.
    keep = like.new_empty(batch, channels, 1, 1).bernoulli_(1 - dropout.p).div_(1 - dropout.p)
    return keep.view(batch, channels)


def guidance_at(guidance: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The guidance image at a stage's size: average-pooled where smaller, resized (antialiased) where larger."""
    if size[0] <= guidance.shape[-2] and size[1] <= guidance.shape[-1]:
        return F.adaptive_avg_pool2d(guidance, size)
    return F.interpolate(guidance, size=size, mode="bilinear", align_corners=False, antialias=True)


@register_upsampler
def jbu(dim: int, num_layers: int = 4, key_dim: int = 32, radius: int = 3, range_kernel: str = "dot",
        back_projection: float = 0.0) -> JBUStack:
    """FeatUp's JBU stack over ``dim`` feature channels, reaching any output size in ``num_layers`` layers.

    ``range_kernel="dot"`` is the published layer; ``"distance"`` the bilateral one featup trains (module docstring).
    ``back_projection`` (0..1) steps the output towards pooling back to the features it was given (module
    docstring); it costs one more pass, or a small one for wide features, and a checkpoint records its own.
    """
    return JBUStack(dim, num_layers, key_dim=key_dim, radius=radius, range_kernel=range_kernel,
                    back_projection=back_projection)
