"""Ingesting a plain image folder: keys, conversions, bad files, depth maps, local disk and S3."""

from __future__ import annotations

import numpy as np
import pytest

from featup.data.layouts import ingest
from featup.data.reading import open_shards
from featup.data.samples import BadSample


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
    assert keys == ["a", "cmyk", "deep16", "sub/b", "sub/c_v2"]
    assert {b.key: b.reason for b in manifest.bad}.keys() == {"broken", "tiny"}
    assert "truncated" in next(b.reason for b in manifest.bad if b.key == "broken")
    assert manifest.classes is None and not manifest.has_label
    items = {s["__key__"]: s for s in open_shards(storage_root.join("photos"), size=None, storage_options=so)}
    assert items["cmyk"]["meta"]["conversions"] == ["CMYK → RGB"]
    assert items["sub/c_v2"]["meta"] == {"file": "sub/c.v2.png", "conversions": ["grayscale → RGB"]}
    assert all(s["image"].shape == (3, 32, 48) for s in items.values())


def test_depth_maps_come_from_the_parallel_folder(photo_folder, tmp_path):
    root, depth = photo_folder
    manifest = ingest("folder", str(root), str(tmp_path / "out"), depth_root=str(depth), progress=False)
    assert manifest.has_depth
    reasons = {b.key: b.reason for b in manifest.bad}
    assert "depth map is (3, 3)" in reasons["cmyk"]
    items = {s["__key__"]: s for s in open_shards(str(tmp_path / "out"), size=None) if not isinstance(s, BadSample)}
    assert items["a"]["depth"].eq(2.5).all() and items["sub/b"]["depth"] is None


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ingest("folder", str(tmp_path / "nope"), str(tmp_path / "out"), progress=False)
