"""Offline benchmark sets: deterministic, in the sample contract, exact answers, and through shards."""

import numpy as np
import pytest

from featup.data.offline import (
    DIGIT_CLASSES,
    FASHION_CLASSES,
    FASHION_MNIST_DIR,
    depth_scenes,
    fashion_mosaics,
    load_items,
    photo_crops,
)
from featup.data.reading import open_shards
from featup.data.samples import check_sample
from featup.data.shards import write_shards

needs_fashion = pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)


def assert_same(a: list[dict], b: list[dict]) -> None:
    assert [s["__key__"] for s in a] == [s["__key__"] for s in b]
    for x, y in zip(a, b):
        for name in ("image", "label", "depth"):
            assert (x[name] is None) == (y[name] is None)
            if x[name] is not None:
                np.testing.assert_array_equal(x[name], y[name])
        assert x["meta"] == y["meta"]


@needs_fashion
def test_fashion_items_are_the_installed_idx_files():
    images, classes, names, source = load_items("test")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert sorted(np.unique(classes)) == list(range(10)) and source == "fashion-mnist"
    assert names == FASHION_CLASSES


@needs_fashion
def test_mosaics_are_deterministic_and_follow_the_contract():
    first = list(fashion_mosaics(3, seed=4, split="test", size=96, item_size=(24, 40)))
    assert_same(first, list(fashion_mosaics(3, seed=4, split="test", size=96, item_size=(24, 40))))
    # Sample i depends on (seed, split, i) only, not on how many are drawn.
    assert_same(first[:2], list(fashion_mosaics(2, seed=4, split="test", size=96, item_size=(24, 40))))
    other = next(fashion_mosaics(1, seed=5, split="test", size=96, item_size=(24, 40)))
    assert not np.array_equal(other["image"], first[0]["image"])
    for sample in first:
        check_sample(sample)
        assert sample["image"].shape == (96, 96, 3) and sample["label"].dtype == np.uint8
        assert sample["meta"]["class_names"] == list(FASHION_CLASSES)


@needs_fashion
def test_mosaic_labels_mark_exactly_the_painted_items():
    sample = next(fashion_mosaics(1, seed=0, size=128, items_per_image=(4, 4), item_size=(40, 60)))
    label, image, items = sample["label"], sample["image"].astype(int), sample["meta"]["items"]
    assert len(items) == 4
    assert set(np.unique(label)) <= {0} | {item["class"] for item in items}
    # Every labelled pixel lies inside the box of an item of that class.
    inside = np.zeros_like(label, dtype=bool)
    for item in items:
        y0, x0, y1, x1 = item["box"]
        inside[y0:y1, x0:x1] |= label[y0:y1, x0:x1] == item["class"]
    assert np.array_equal(inside, label > 0)
    # The last item pasted is fully visible: its class covers a real part of its box.
    y0, x0, y1, x1 = items[-1]["box"]
    assert (label[y0:y1, x0:x1] == items[-1]["class"]).mean() > 0.2
    # Items are painted over the canvas: labelled pixels differ in colour from the background around them.
    assert np.abs(image[label > 0].mean(0) - image[label == 0].mean(0)).max() > 5


def test_missing_fashion_mnist_falls_back_to_digits_with_a_message(tmp_path):
    with pytest.warns(UserWarning, match="apt-get install dataset-fashion-mnist"):
        samples = list(fashion_mosaics(2, seed=0, size=64, item_size=(16, 32), root=str(tmp_path)))
    assert samples[0]["meta"]["source"] == "sklearn-digits"
    assert samples[0]["meta"]["class_names"] == list(DIGIT_CLASSES)
    assert samples[0]["label"].max() <= 10 and (samples[0]["label"] > 0).any()


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="split"):
        next(fashion_mosaics(1, split="val"))
    with pytest.raises(ValueError, match="item_size"):
        next(fashion_mosaics(1, size=32, item_size=(16, 48)))


def test_depth_scenes_are_deterministic_with_positive_finite_depth():
    first = list(depth_scenes(2, seed=1, size=48))
    assert_same(first, list(depth_scenes(2, seed=1, size=48)))
    assert not np.array_equal(next(depth_scenes(1, seed=2, size=48))["depth"], first[0]["depth"])
    for sample in first:
        check_sample(sample)
        depth = sample["depth"]
        assert depth.dtype == np.float32 and np.isfinite(depth).all() and depth.min() > 0
        assert depth.max() <= sample["meta"]["wall_distance"] / np.cos(np.deg2rad(60)) + 1e-3


def test_empty_scene_depth_is_the_exact_ray_plane_distance():
    size = 32
    sample = next(depth_scenes(1, seed=3, size=size, objects=(0, 0)))
    camera, wall = sample["meta"]["camera"], sample["meta"]["wall_distance"]
    pitch, height = np.deg2rad(camera["pitch_deg"]), camera["height"]
    # Independent ray cast at the 2× render grid: planar depth of the ground (y = 0) or wall (z = wall).
    n = 2 * size
    focal = (n / 2) / np.tan(np.deg2rad(camera["fov_deg"]) / 2)
    v = np.mgrid[0:n, 0:n][0] + 0.5
    yc, zc = -(v - n / 2) / focal, np.ones_like(v)
    y_world = np.cos(pitch) * yc - np.sin(pitch) * zc
    z_world = np.sin(pitch) * yc + np.cos(pitch) * zc
    with np.errstate(divide="ignore"):
        ground = np.where(y_world < 0, height / -y_world, np.inf)
    expected = np.minimum(ground, wall / z_world).reshape(size, 2, size, 2).mean((1, 3))
    np.testing.assert_allclose(sample["depth"], expected, rtol=1e-5)
    assert sample["depth"][-1].mean() < sample["depth"][0].mean()  # the ground nearby, the wall far away


def test_photo_crops_start_with_the_centred_square():
    crops = list(photo_crops(3, seed=0, size=64, names=["chelsea"]))
    assert [c["__key__"] for c in crops] == ["photo-chelsea-0-000", "photo-chelsea-0-001", "photo-chelsea-0-002"]
    assert crops[0]["meta"]["crop"] == [0, 75, 300, 375] and not crops[0]["meta"]["flipped"]
    assert_same(crops, list(photo_crops(3, seed=0, size=64, names=["chelsea"])))
    for crop in crops:
        check_sample(crop)
        assert crop["image"].shape == (64, 64, 3)


@needs_fashion
def test_offline_sets_round_trip_through_shards(storage_root):
    so = storage_root.storage_options
    samples = list(fashion_mosaics(2, seed=0, size=64, item_size=(16, 32))) + list(depth_scenes(2, seed=0, size=64))
    url = storage_root.join("offline")
    manifest = write_shards(samples, url, image_format="png", max_count=3, storage_options=so, progress=False)
    assert manifest.has_label and manifest.has_depth and not manifest.bad
    decoded = {s["__key__"]: s for s in open_shards(url, size=None, storage_options=so)}
    assert list(decoded) == [s["__key__"] for s in samples]
    for sample in samples:
        got = decoded[sample["__key__"]]
        np.testing.assert_array_equal((got["image"].permute(1, 2, 0) * 255).round().byte().numpy(), sample["image"])
        if sample["label"] is not None:
            np.testing.assert_array_equal(got["label"].numpy(), sample["label"])
        if sample["depth"] is not None:
            np.testing.assert_array_equal(got["depth"].numpy(), sample["depth"])
        assert got["meta"] == sample["meta"]
