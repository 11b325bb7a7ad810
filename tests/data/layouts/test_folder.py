"""Ingesting a plain image folder: keys, conversions, bad files, depth maps, local disk and S3."""

from __future__ import annotations

import numpy as np
import pytest

from featup.data.layouts import ingest
from featup.data.reading import open_shards
from featup.data.samples import BadSample, key_for_name, name_for_key


@pytest.fixture
def photo_folder(tmp_path, image_zoo):
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    (root / "a.png").write_bytes(image_zoo["rgb_png"])
    (root / "sub" / "b.jpg").write_bytes(image_zoo["rgb_jpg"])
    (root / "sub" / "c.v2.png").write_bytes(image_zoo["gray_png"])
    (root / "cmyk.jpg").write_bytes(image_zoo["cmyk_jpg"])
    (root / "deep16.png").write_bytes(image_zoo["gray16_png"])
    (root / "broken.jpg").write_bytes(image_zoo["truncated_jpg"])
    (root / "tiny.png").write_bytes(image_zoo["tiny_png"])
    (root / "notes.txt").write_text("not an image")
    depth = tmp_path / "depth"
    depth.mkdir()
    np.save(depth / "a.npy", np.full((32, 48), 2.5, np.float32))
    np.save(depth / "cmyk.npy", np.ones((3, 3), np.float32))  # wrong size
    return root, depth


def test_folder_ingest_keeps_good_images_and_lists_bad_ones(photo_folder, storage_root):
    root, _ = photo_folder
    so = storage_root.storage_options
    manifest = ingest(
        "folder", str(root), storage_root.join("photos"), image_format="png", storage_options=so, progress=False
    )
    keys = [k for s in manifest.shards for k in s.keys]
    assert keys == ["a%2Epng", "cmyk%2Ejpg", "deep16%2Epng", "sub/b%2Ejpg", "sub/c%2Ev2%2Epng"]
    assert {b.key: b.reason for b in manifest.bad}.keys() == {"broken%2Ejpg", "tiny%2Epng"}
    assert "truncated" in next(b.reason for b in manifest.bad if b.key == "broken%2Ejpg")
    assert manifest.classes is None and not manifest.has_label
    items = {s["__key__"]: s for s in open_shards(storage_root.join("photos"), size=None, storage_options=so)}
    assert items["cmyk%2Ejpg"]["meta"]["conversions"] == ["CMYK → RGB"]
    assert items["sub/c%2Ev2%2Epng"]["meta"] == {"file": "sub/c.v2.png", "conversions": ["grayscale → RGB"]}
    assert all(s["image"].shape == (3, 32, 48) for s in items.values())


def test_depth_maps_come_from_the_parallel_folder(photo_folder, tmp_path):
    root, depth = photo_folder
    manifest = ingest("folder", str(root), str(tmp_path / "out"), depth_root=str(depth), progress=False)
    assert manifest.has_depth
    reasons = {b.key: b.reason for b in manifest.bad}
    assert "depth map is (3, 3)" in reasons["cmyk%2Ejpg"]
    items = {s["__key__"]: s for s in open_shards(str(tmp_path / "out"), size=None) if not isinstance(s, BadSample)}
    assert items["a%2Epng"]["depth"].eq(2.5).all() and items["sub/b%2Ejpg"]["depth"] is None


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ingest("folder", str(tmp_path / "nope"), str(tmp_path / "out"), progress=False)


def test_a_folder_without_images_is_an_error_not_an_empty_dataset(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    with pytest.raises(FileNotFoundError, match="no jpg/jpeg/png.* files under .*empty: is this the right folder"):
        ingest("folder", str(tmp_path / "empty"), str(tmp_path / "out"), progress=False)
    assert not (tmp_path / "out").exists()


def test_every_file_name_gets_its_own_reversible_key_and_unreadable_files_are_recorded(tmp_path, image_zoo):
    root = tmp_path / "odd"
    root.mkdir()
    names = ["dots.in.name.jpg", "dots_in_name.jpg", "same.jpg", "same.png", " leading space.jpg", "__x.jpg",
             "100%.jpg", "tab\tand\nnewline.jpg", "ünïcode.jpg"]
    for name in names:
        (root / name).write_bytes(image_zoo["rgb_jpg"])
    (root / "dangling.jpg").symlink_to(root / "nowhere.jpg")
    (root / "loop.jpg").symlink_to(root / "loop.jpg")
    manifest = ingest("folder", str(root), str(tmp_path / "out"), progress=False)

    keys = [k for s in manifest.shards for k in s.keys]
    assert sorted(name_for_key(k) for k in keys) == sorted(names), "every readable image kept, none merged"
    assert len(set(keys)) == len(names)
    reasons = {name_for_key(b.key): (b.source, b.reason) for b in manifest.bad}
    assert set(reasons) == {"dangling.jpg", "loop.jpg"}
    assert reasons["dangling.jpg"][0].endswith("odd/dangling.jpg") and "No such file" in reasons["dangling.jpg"][1]
    assert "symbolic links" in reasons["loop.jpg"][1]
    read = {s["__key__"] for s in open_shards(str(tmp_path / "out"), size=None)}
    assert read == set(keys), "the keys survive the trip through webdataset tars unchanged"


@pytest.mark.parametrize("name", ["a", "a.b.c", "%2E", ".hidden", " x", "__init__", "sub/dir.d/f.g", "\x7f", "é"])
def test_keys_round_trip(name):
    key = key_for_name(name)
    assert "." not in key and not key[0].isspace() and not key.startswith("__")
    assert name_for_key(key) == name
