"""CAMs from the real EfficientNet-Lite0 ImageNet head: normalisation, faithfulness scores, known answers."""

import pytest
import torch
import torch.nn.functional as F

from featup.eval.cam import class_scores, evaluate_cams, explain, normalize_cam
from featup.eval.features import image_tensor
from featup.photos import sample_photos

EGYPTIAN_CAT, ESPRESSO = 285, 967


@pytest.fixture(scope="module")
def photos():
    images = sample_photos(["chelsea", "coffee"])
    return [image_tensor(images[name], 224) for name in ("chelsea", "coffee")]


def test_normalize_cam_maps_each_image_to_0_1_and_flat_maps_to_ones():
    cam = torch.stack([torch.arange(6.0).reshape(2, 3) - 7, torch.full((2, 3), 4.0)])
    out = normalize_cam(cam)
    assert out[0].min() == 0 and out[0].max() == 1
    torch.testing.assert_close(out[0], (cam[0] + 7) / 5)
    assert torch.equal(out[1], torch.ones(2, 3))


def test_the_real_head_recognises_the_photos(cam_backbone, photos):
    assert class_scores(cam_backbone, photos[0]).argmax().item() == EGYPTIAN_CAT
    assert class_scores(cam_backbone, photos[1]).argmax().item() == ESPRESSO


def test_an_all_ones_cam_gives_average_drop_0(cam_backbone, photos):
    # Constant features make a flat CAM, which normalises to all ones: the masked image is the image.
    def flat(features, image, size):
        return torch.ones(features.shape[0], features.shape[1], *size)

    outcome = explain(cam_backbone, photos[0], flat)
    assert torch.equal(outcome.cam, torch.ones(224, 224))
    assert outcome.o == outcome.y
    scores = evaluate_cams(cam_backbone, photos, flat)
    assert scores == {"average_drop": 0.0, "average_increase": 0.0}


def test_masking_with_the_cam_keeps_the_class(cam_backbone, photos):
    outcome = explain(cam_backbone, photos[0])
    assert outcome.class_index == EGYPTIAN_CAT
    assert outcome.cam.shape == (224, 224) and outcome.cam.min() == 0 and outcome.cam.max() == 1
    assert outcome.y == pytest.approx(class_scores(cam_backbone, photos[0])[0, EGYPTIAN_CAT].item())
    masked = class_scores(cam_backbone, photos[0] * outcome.cam)
    assert masked[0, EGYPTIAN_CAT].item() == pytest.approx(outcome.o)
    assert masked.argmax().item() == EGYPTIAN_CAT and outcome.o > 0.5 * outcome.y


def test_cam_of_upsampled_features_equals_the_resized_low_res_cam(cam_backbone, photos):
    # A CAM is linear per pixel, so copying feature cells (nearest) and copying CAM cells agree exactly.
    def nearest(features, image, size):
        return F.interpolate(features, size=size, mode="nearest-exact")

    up = explain(cam_backbone, photos[1], nearest)
    low = explain(cam_backbone, photos[1], resize_mode="nearest")
    torch.testing.assert_close(up.cam, low.cam, atol=1e-5, rtol=0)
    assert up.o == pytest.approx(low.o, abs=1e-5)
    assert up.class_index == low.class_index == ESPRESSO


def test_a_backbone_without_a_head_is_refused(dense_backbone, photos):
    with pytest.raises(ValueError, match="stride32"):
        explain(dense_backbone, photos[0])


def test_one_image_at_a_time(cam_backbone, photos):
    with pytest.raises(ValueError, match="1×3×H×W"):
        explain(cam_backbone, torch.cat(photos))
