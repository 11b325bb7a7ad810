import pytest
import torch
import torch.nn.functional as F

from featup.synthetic import SyntheticBackbone, compare_on_synthetic, feature_metrics, synthetic_images


pytestmark = pytest.mark.usefixtures("one_thread")


def test_images_are_seeded_rgb_in_range():
    a = synthetic_images(3, (24, 40), seed=5)
    assert a.shape == (3, 3, 24, 40) and a.min() >= 0 and a.max() <= 1
    torch.testing.assert_close(a, synthetic_images(3, (24, 40), seed=5))
    assert not torch.equal(a, synthetic_images(3, (24, 40), seed=6))
    # Shapes make flat regions with sharp edges: many pixels equal their right neighbour, some jump.
    jumps = (a[..., 1:] - a[..., :-1]).abs().amax(1)
    assert (jumps < 1e-2).float().mean() > 0.5 and (jumps > 0.1).any()


def test_backbone_pools_its_true_features_by_its_stride():
    backbone = SyntheticBackbone(dim=6, stride=4, seed=0)
    image = synthetic_images(2, 16, seed=0)
    low = backbone(backbone.normalize(image))
    assert low.shape == (2, 6, 4, 4)
    torch.testing.assert_close(low, F.avg_pool2d(backbone.true_features(image), 4), atol=1e-5, rtol=0)
    assert (backbone.name, backbone.dim, backbone.stride) == ("synthetic", 6, 4)
    with pytest.raises(ValueError, match="stride"):
        backbone(torch.zeros(1, 3, 10, 16))


def test_true_features_follow_image_edges():
    backbone = SyntheticBackbone(dim=8, stride=4, seed=0)
    image = torch.zeros(1, 3, 8, 8)
    image[..., 4:] = 1.0  # a vertical edge between columns 3 and 4
    features = backbone.true_features(image)
    step = (features[..., 1:] - features[..., :-1]).abs().sum(1)[0]
    assert step[:, 3].min() > 10 * step[:, :2].max()


def test_feature_metrics():
    truth = torch.randn(2, 4, 5, 5)
    perfect = feature_metrics(truth, truth)
    assert perfect["cosine"] == pytest.approx(1.0) and perfect["psnr"] > 100
    noisy = feature_metrics(truth + 0.1 * torch.randn_like(truth), truth)
    assert 0.9 < noisy["cosine"] < 1 and 20 < noisy["psnr"] < 60
    with pytest.raises(ValueError, match="differ in shape"):
        feature_metrics(truth[:1], truth)


@pytest.mark.slow
def test_jbu_and_implicit_recover_detail_bilinear_cannot():
    results = compare_on_synthetic(
        image_size=32, stride=4, dim=8, train_images=32, test_images=8, jbu_steps=80, jbu_layers=2,
        jbu_options=dict(lr=1e-2, lr_decay=True, batch_size=4, num_jitters=3, max_pad=3),
        implicit_images=2, implicit_options=dict(steps=80, views=64, max_pad=4), progress=False,
    )
    for name, baseline in (("jbu", "bilinear"), ("implicit", "bilinear@implicit")):
        assert results[name]["psnr"] > results[baseline]["psnr"] + 1.0, results
        assert results[name]["cosine"] > results[baseline]["cosine"] + 0.01, results
