"""write_shards: size limits, manifest, bad and duplicate samples, atomic shards, on local disk and S3."""

from __future__ import annotations

import tarfile

import numpy as np
import pytest

from featup.data.manifest import read_manifest
from featup.data.samples import BadSample
from featup.data.shards import encode_sample, write_shards
from featup.io import exists, filesystem


def make_samples(n, *, size=(24, 32), label=True, depth=False, seed=0):
    rng = np.random.default_rng(seed)
    h, w = size
    for i in range(n):
        yield {
            "__key__": f"img{i:04d}",
            "image": rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
            "label": rng.integers(0, 4, (h, w)).astype(np.uint8) if label else None,
            "depth": rng.random((h, w)).astype(np.float32) if depth else None,
            "meta": {"i": i},
        }


def test_shards_split_by_count_and_manifest_lists_them(storage_root):
    so = storage_root.storage_options
    url = storage_root.join("toy")
    manifest = write_shards(
        make_samples(7), url, max_count=3, classes=["a", "b", "c", "d"], storage_options=so, progress=False
    )
    assert [s.count for s in manifest.shards] == [3, 3, 1]
    assert [s.name for s in manifest.shards] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert [k for s in manifest.shards for k in s.keys] == [f"img{i:04d}" for i in range(7)]
    assert manifest.has_label and not manifest.has_depth and manifest.classes == ["a", "b", "c", "d"]
    assert read_manifest(url, storage_options=so) == manifest
    fs, _ = filesystem(url, so)
    for shard_url, info in zip(manifest.shard_urls(), manifest.shards, strict=True):
        assert fs.size(filesystem(shard_url, so)[1]) == info.bytes
        with fs.open(filesystem(shard_url, so)[1], "rb") as f, tarfile.open(fileobj=f) as tar:
            names = tar.getnames()
        assert names[:3] == [f"{info.keys[0]}.jpg", f"{info.keys[0]}.json", f"{info.keys[0]}.label.png"]


def test_shards_split_by_bytes(tmp_path):
    samples = list(make_samples(6, size=(64, 64)))
    # tar size of one sample: each member is a 512-byte header plus its data padded to 512
    one = sum(
        512 + -(-len(v) // 512) * 512
        for k, v in encode_sample(samples[0], image_format="png").items()
        if k != "__key__"
    )
    manifest = write_shards(samples, str(tmp_path / "ds"), max_bytes=int(2.5 * one), image_format="png", progress=False)
    # samples of noise are all about the same size: two fit, a third would pass the limit
    assert [s.count for s in manifest.shards] == [2, 2, 2]
    assert all(s.bytes <= 2.5 * one + 10240 for s in manifest.shards)  # + tar's end-of-archive blocks


def test_same_samples_give_identical_shards(tmp_path):
    a = write_shards(make_samples(3), str(tmp_path / "a"), progress=False)
    b = write_shards(make_samples(3), str(tmp_path / "b"), progress=False)
    assert (tmp_path / "a" / "shard-000000.tar").read_bytes() == (tmp_path / "b" / "shard-000000.tar").read_bytes()
    assert a.shards == b.shards


def test_bad_and_duplicate_samples_are_recorded_not_written(tmp_path):
    items = list(make_samples(3))
    items.insert(1, BadSample("broken", "/src/broken.jpg", "truncated"))
    items.append(dict(items[0]))  # same key again
    items.append({**items[2], "__key__": "has.dot"})
    manifest = write_shards(items, str(tmp_path / "ds"), progress=False)
    assert manifest.num_samples == 3
    reasons = {b.key: b.reason for b in manifest.bad}
    assert reasons["broken"] == "truncated"
    assert "duplicate key" in reasons["img0000"]
    assert "replace dots" in reasons["has.dot"]
    assert read_manifest(str(tmp_path / "ds")).bad == manifest.bad


def test_existing_dataset_is_not_overwritten_by_accident(tmp_path):
    url = str(tmp_path / "ds")
    write_shards(make_samples(2), url, progress=False)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_shards(make_samples(2), url, progress=False)
    assert write_shards(make_samples(1), url, overwrite=True, progress=False).num_samples == 1


def test_failure_mid_shard_leaves_no_partial_shard_and_no_manifest(storage_root):
    so = storage_root.storage_options
    url = storage_root.join("ds")

    def failing():
        yield from make_samples(4)
        raise OSError("source disk vanished")

    with pytest.raises(OSError, match="source disk vanished"):
        write_shards(failing(), url, max_count=3, storage_options=so, progress=False)
    # the first shard (3 samples) was complete and is there; the second, cut short, is not
    assert exists(storage_root.join("ds", "shard-000000.tar"), so)
    assert not exists(storage_root.join("ds", "shard-000001.tar"), so)
    assert not exists(storage_root.join("ds", "manifest.json"), so)


def test_bad_limits_are_refused(tmp_path):
    with pytest.raises(ValueError, match="positive"):
        write_shards([], str(tmp_path), max_count=0)
