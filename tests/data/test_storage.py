"""Atomic writes on local disk and S3: an object is complete under its name, or absent."""

from __future__ import annotations

import pytest

from featup.io import atomic_write, exists, filesystem, join_url, read_bytes


def test_join_url_for_paths_and_urls():
    assert join_url("s3://b/x/", "y", "/z.tar") == "s3://b/x/y/z.tar"
    assert join_url("/tmp/a", "b") == "/tmp/a/b"


def test_atomic_write_publishes_on_success(storage_root):
    url = storage_root.join("dir", "obj.bin")
    with atomic_write(url, storage_root.storage_options) as f:
        f.write(b"x" * 10)
        assert not exists(url, storage_root.storage_options)  # not visible while being written
    assert read_bytes(url, storage_root.storage_options) == b"x" * 10


def test_atomic_write_leaves_nothing_on_failure(storage_root):
    url = storage_root.join("dir", "obj.bin")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(url, storage_root.storage_options) as f:
            f.write(b"partial")
            raise RuntimeError("boom")
    fs, path = filesystem(storage_root.url, storage_root.storage_options)
    leftovers = fs.find(path) if fs.exists(path) else []
    assert leftovers == []


def test_reading_a_missing_object_names_it(storage_root):
    url = storage_root.join("missing.bin")
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        read_bytes(url, storage_root.storage_options)
