"""Scoring features read back from a feature store: the same numbers as upsampling on the fly, and clear errors."""

import pytest
import torch

from featup.data.offline import fashion_mosaics
from featup.data.reading import open_shards
from featup.data.shards import write_shards
from featup.eval import CompareSettings, StoredFeatures, compare_upsamplers
from featup.eval.features import backbone_features, image_tensor
from featup.pipeline import precompute_shard
from featup.store import FeatureSpec, create_feature_store, open_feature_store
from featup.upsamplers import load_upsampler

SIZE = 64


@pytest.fixture(scope="module")
def mosaics(tmp_path_factory, dense_backbone):
    """Mosaic shards (two shards) and a float32 store of their bilinear features with only shard 0 complete."""
    root = tmp_path_factory.mktemp("stored")
    samples = list(fashion_mosaics(6, seed=0, split="test", size=SIZE, item_size=(20, 36), items_per_image=(2, 3)))
    manifest = write_shards(samples, str(root / "shards"), max_count=3, image_format="png", progress=False)
    spec = FeatureSpec(dataset="mosaics", backbone=dense_backbone.id, upsampler="bilinear",
                       channels=dense_backbone.dim, size=(SIZE, SIZE), dtype="float32")
    store = create_feature_store(str(root / "store"), spec, manifest)
    precompute_shard(store, 0, dense_backbone, load_upsampler("bilinear"), image_size=(SIZE, SIZE), device="cpu",
                     num_workers=0)  # in-process reading: no loader worker forked from a test process
    read = list(open_shards(str(root / "shards"), size=SIZE))
    return {"store": store.url, "done": read[:3], "pending": read[3:]}


def settings():
    return CompareSettings(image_size=SIZE, pixels_per_image=256, seg_steps=30, probe_protocol="own")


def test_stored_features_score_like_upsampling_on_the_fly(dense_backbone, mosaics):
    stored = StoredFeatures(open_feature_store(mosaics["store"]))
    bilinear = load_upsampler("bilinear")
    # What is deterministic: the features a probe is given. For every sample, the store serves the features
    # upsampling on the fly gives (the pipeline featurises in batches, which moves float32 results by ~1e-6
    # relative, no more). A probe trained on them is not compared: with several threads its SGD amplifies
    # those 1e-6 into mIoU differences of a few hundredths, so such a check fails by thread count, not by bug.
    for sample in mosaics["done"]:
        image = image_tensor(sample["image"], SIZE)
        live = bilinear(backbone_features(dense_backbone, image), image, (SIZE, SIZE))
        torch.testing.assert_close(stored.read(sample["__key__"]), live, rtol=1e-4, atol=1e-4)

    # And scoring a store runs the same protocol as scoring an upsampler: both rows get every cell.
    train, test = mosaics["done"][:2], mosaics["done"][2:]
    result = compare_upsamplers(dense_backbone, {"bilinear": bilinear, "store": stored},
                                seg_train=train, seg_test=test, num_classes=11, settings=settings(), progress=False)
    on_the_fly, read_back = result.rows
    assert read_back["upsampler"] == "store"
    for name in ("seg_miou", "seg_acc"):
        assert 0.0 <= read_back[name] <= 1.0 and 0.0 <= on_the_fly[name] <= 1.0


def test_a_store_serves_its_own_backbone_and_leaves_others_to_a_fallback(dense_backbone, cam_backbone, mosaics):
    store = open_feature_store(mosaics["store"])
    assert StoredFeatures(store)(dense_backbone) is not None
    assert StoredFeatures(store)(cam_backbone) is None  # the stride-32 head is another backbone: cells stay empty
    bilinear = load_upsampler("bilinear")
    assert StoredFeatures(store, otherwise=bilinear)(cam_backbone) is bilinear
    assert StoredFeatures(store, otherwise=lambda b: b.dim)(cam_backbone) == 1280


def test_a_sample_of_an_unfinished_shard_is_an_error_saying_how_to_finish(dense_backbone, mosaics):
    stored = StoredFeatures(open_feature_store(mosaics["store"]))
    with pytest.raises(KeyError, match="run precompute-features on the same shards again"):
        compare_upsamplers(dense_backbone, {"store": stored}, seg_train=mosaics["done"], seg_test=mosaics["pending"],
                           num_classes=11, settings=settings(), progress=False)
