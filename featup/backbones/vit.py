"""Vision transformers: supervised ViT-S/16, DINO ViT-S/16 and S/8, DINOv2 ViT-S/14, CLIP ViT-B/16 (tap ``last``)."""

from __future__ import annotations

from featup.backbones._registry import (
    CLIP_MEAN,
    CLIP_STD,
    BackboneSpec,
    register_backbone,
)


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
