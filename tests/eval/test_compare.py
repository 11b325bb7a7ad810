"""compare_upsamplers on the real EfficientNet-Lite0 with tiny offline sets: rows, known identities, errors."""

import math

import pytest
import torch

from featup.data.offline import depth_scenes, fashion_mosaics, photo_crops
from featup.eval.compare import CompareSettings, compare_upsamplers
from featup.upsamplers import create_upsampler, load_upsampler

SIZE = 64


@pytest.fixture(scope="module")
def sets():
    mosaic = {"size": SIZE, "item_size": (20, 36), "items_per_image": (2, 3)}
    return {
        "seg_train": list(fashion_mosaics(3, seed=0, split="train", **mosaic)),
        "seg_test": list(fashion_mosaics(2, seed=0, split="test", **mosaic)),
        "depth_train": list(depth_scenes(3, seed=0, split="train", size=SIZE)),
        "depth_test": list(depth_scenes(2, seed=0, split="test", size=SIZE)),
        "cam_images": list(photo_crops(1, size=SIZE, names=["chelsea", "coffee"])),
    }


def settings(**kw):
    return CompareSettings(image_size=SIZE, pixels_per_image=256, seg_steps=30, depth_steps=30, **kw)


def test_a_low_res_probe_transfers_to_bilinear_features_exactly(dense_backbone, cam_backbone, sets):
    # A linear probe commutes with bilinear interpolation, so with one shared probe and bilinear resizing of
    # low-res predictions the two rows must agree: the comparison adds nothing of its own.
    result = compare_upsamplers(dense_backbone, {"low-res": None, "bilinear": load_upsampler("bilinear")},
                                num_classes=11, cam_backbone=cam_backbone,
                                settings=settings(probe_protocol="lowres", resize_mode="bilinear"),
                                progress=False, **sets)
    low, bilinear = result.rows
    for key in ("seg_miou", "seg_acc", "depth_rmse", "depth_delta1"):
        assert low[key] == pytest.approx(bilinear[key], rel=1e-3, abs=1e-4), key
    # CAMs are min-max normalised on their own grid, which moves values by well under 1 %.
    assert low["cam_ad"] == pytest.approx(bilinear["cam_ad"], abs=1.0)
    assert result.counts == {"seg_train": 3, "seg_test": 2, "depth_train": 3, "depth_test": 2, "cam": 2}


def test_rows_examples_and_upsamplers_that_cannot_serve_a_backbone(dense_backbone, cam_backbone, sets):
    def conv_for_dense_only(backbone):
        return create_upsampler("resize_conv", dim=backbone.dim) if backbone.dim == dense_backbone.dim else None

    calls = []

    def traced_bilinear(backbone):
        def upsample(features, image, size):
            calls.append((backbone.dim, tuple(features.shape), size))
            return torch.nn.functional.interpolate(features, size=size, mode="bilinear")
        return upsample

    result = compare_upsamplers(
        dense_backbone, {"low-res": None, "conv": conv_for_dense_only, "traced": traced_bilinear},
        num_classes=11, cam_backbone=cam_backbone, settings=settings(output_size=32), progress=False, **sets)
    rows = {r["upsampler"]: r for r in result.rows}
    assert list(rows) == ["low-res", "conv", "traced"]
    assert "cam_ad" not in rows["conv"] and "seg_miou" in rows["conv"]
    for row in result.rows:
        assert 0 <= row["seg_miou"] <= 1 and 0 < row["seg_acc"] <= 1
        assert 0 < row["depth_delta1"] <= 1 and row["depth_rmse"] > 0
        assert row["upsample_s"] >= 0
    assert rows["low-res"]["upsample_s"] == 0 and rows["traced"]["upsample_s"] > 0
    assert all(0 <= rows[n]["cam_ad"] <= 100 and 0 <= rows[n]["cam_ai"] <= 100 for n in ("low-res", "traced"))
    # "own" protocol: train and test images of both probe tasks, then the CAM images, at the requested size.
    dense_calls = [c for c in calls if c[0] == 112]
    assert len(dense_calls) == 3 + 2 + 3 + 2 and all(c[2] == (32, 32) for c in calls)
    assert len(calls) - len(dense_calls) == 2
    assert set(result.examples) == {"features", "seg", "depth", "cam"}
    feats = result.examples["features"].outputs
    assert feats["low-res"].shape == (112, 4, 4) and feats["traced"].shape == (112, 32, 32)
    assert result.examples["seg"].outputs["traced"].shape == (SIZE, SIZE)
    assert result.examples["cam"].outputs["traced"].shape == (SIZE, SIZE)
    assert not any(math.isnan(v) for r in result.rows for v in r.values() if isinstance(v, float))


def test_missing_pieces_raise_with_a_fix(dense_backbone, sets):
    ups = {"low-res": None}
    with pytest.raises(ValueError, match="num_classes"):
        compare_upsamplers(dense_backbone, ups, seg_train=sets["seg_train"], seg_test=sets["seg_test"])
    with pytest.raises(ValueError, match="both splits"):
        compare_upsamplers(dense_backbone, ups, depth_train=sets["depth_train"])
    with pytest.raises(ValueError, match="classifier head"):
        compare_upsamplers(dense_backbone, ups, cam_images=sets["cam_images"], progress=False)
    with pytest.raises(ValueError, match="has no 'depth'"):
        compare_upsamplers(dense_backbone, ups, depth_train=sets["seg_train"], depth_test=sets["seg_test"],
                           progress=False)
    with pytest.raises(ValueError, match="probe_protocol"):
        CompareSettings(probe_protocol="fancy")


def test_on_progress_is_told_each_stage_as_it_starts(dense_backbone, cam_backbone, sets):
    told = []
    compare_upsamplers(dense_backbone, {"low-res": None, "bilinear": load_upsampler("bilinear")}, num_classes=11,
                       seg_train=sets["seg_train"], seg_test=sets["seg_test"], cam_images=sets["cam_images"],
                       cam_backbone=cam_backbone, settings=settings(), progress=False,
                       on_progress=lambda fraction, label: told.append((label, fraction)))
    # 7 stages: two backbone passes and a probe per upsampler for segmentation, a pass and CAMs per upsampler
    stages = ["seg train: backbone", "seg test: backbone", "seg probe: low-res", "seg probe: bilinear",
              "cam: backbone", "CAMs: low-res", "CAMs: bilinear"]
    assert told == [(label, pytest.approx(i / 7)) for i, label in enumerate(stages)] + [("done", 1.0)]
