"""ResNet-50 with stride-16 (layer3) and stride-32 (layer4, with its ImageNet head) taps."""

from __future__ import annotations

from featup.backbones._registry import BackboneSpec, register_backbone


@register_backbone
def resnet50() -> BackboneSpec:
    return BackboneSpec("resnet50", "resnet50", {"stride16": 16, "stride32": 32}, "stride32",
                        weights_hint="torchvision's ImageNet ResNet-50 weights (resnet50-0676ba61.pth) "
                                     "or timm's resnet50.tv_in1k")
