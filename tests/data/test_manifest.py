"""manifest.json: round trip, and clear errors for a missing or foreign manifest."""

from __future__ import annotations

import pytest

from featup.data.manifest import Manifest, ShardInfo, read_manifest, write_manifest
from featup.data.samples import BadSample


def test_round_trip_keeps_everything(storage_root):
    manifest = Manifest(
        name="toy",
        shards=[ShardInfo("shard-000000.tar", 2, 2048, ("a", "b")), ShardInfo("shard-000001.tar", 1, 1024, ("c",))],
        classes=["sky", "tree"],
        has_label=True,
        bad=[BadSample("d", "/src/d.jpg", "truncated")],
        meta={"split": "val"},
    )
    write_manifest(manifest, storage_root.join("ds"), storage_options=storage_root.storage_options)
    back = read_manifest(storage_root.join("ds"), storage_options=storage_root.storage_options)
    assert back == manifest
    assert back.num_samples == 3
    assert back.shard_urls() == [
        storage_root.join("ds", "shard-000000.tar"),
        storage_root.join("ds", "shard-000001.tar"),
    ]


def test_missing_manifest_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no shard manifest at .*manifest.json.*write the shards first"):
        read_manifest(str(tmp_path / "nothing"))


def test_foreign_json_is_refused():
    with pytest.raises(ValueError, match="not a featup shard manifest"):
        Manifest.from_json('{"hello": 1}', url="x/manifest.json")
    with pytest.raises(ValueError, match="not valid JSON"):
        Manifest.from_json("{", url="x/manifest.json")
