import numpy as np
from PIL import Image

from featup.data.layouts import get_layout
from featup.data.layouts.pool import pool_images, pool_sources
from featup.data.samples import BadSample


def _photo(path, seed):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(path)


def test_pool_takes_packaged_photos_and_folder_images_but_never_opencv_samples(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "opencv-doc").mkdir()
    _photo(tmp_path / "a" / "beach.jpg", 0)
    _photo(tmp_path / "a" / "beach.png", 1)  # same stem: must stay a separate source with separate keys
    _photo(tmp_path / "opencv-doc" / "lena.jpg", 2)
    sources = pool_sources([str(tmp_path)])
    assert sources[0].startswith("photo:")
    assert [s for s in sources if not s.startswith("photo:")] == [str(tmp_path / "a" / "beach.jpg"),
                                                                  str(tmp_path / "a" / "beach.png")]


def test_pool_crops_are_deterministic_unique_and_bad_files_recorded(tmp_path):
    _photo(tmp_path / "beach.jpg", 0)
    _photo(tmp_path / "beach.png", 1)
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    folder_only = [s for s in pool_images(3, size=32, folders=[str(tmp_path)])
                   if isinstance(s, BadSample) or s["meta"]["source"].startswith(str(tmp_path))]
    good = [s for s in folder_only if not isinstance(s, BadSample)]
    bad = [s for s in folder_only if isinstance(s, BadSample)]
    assert len(good) == 6 and len({s["__key__"] for s in good}) == 6
    assert all(s["image"].shape == (32, 32, 3) for s in good)
    assert [b.source for b in bad] == [str(tmp_path / "broken.jpg")]
    again = [s for s in pool_images(3, size=32, folders=[str(tmp_path)]) if not isinstance(s, BadSample)
             and s["meta"]["source"].startswith(str(tmp_path))]
    assert all(np.array_equal(a["image"], b["image"]) for a, b in zip(good, again, strict=True))


def test_pool_is_an_ingest_layout(tmp_path):
    found = get_layout("pool")("-", crops_per_image=1, size=32, folders=[str(tmp_path)])
    assert found.meta["sources"] == len(pool_sources([str(tmp_path)]))
    assert sum(1 for _ in found.samples) == found.meta["sources"]


def test_pool_adds_unlabelled_train_images_of_the_offline_sets_and_no_test_image(tmp_path):
    from featup.data import offline

    found = get_layout("pool")("-", crops_per_image=1, offline_images=2, size=32, folders=[str(tmp_path)])
    extra = [s for s in found.samples if not s["meta"]["source"].startswith("photo:")]
    assert [s["meta"]["source"] for s in extra] == ["fashion_mosaics:train"] * 2 + ["depth_scenes:train"] * 2
    assert all(s["label"] is None and s["depth"] is None for s in extra)
    assert len({s["__key__"] for s in extra}) == 4
    train = [m["image"] for m in offline.fashion_mosaics(2, split="train", size=32)]
    test = [m["image"] for m in offline.fashion_mosaics(2, split="test", size=32)]
    assert all(np.array_equal(s["image"], t) for s, t in zip(extra[:2], train, strict=True))
    assert not any(np.array_equal(s["image"], t) for s in extra for t in test)
