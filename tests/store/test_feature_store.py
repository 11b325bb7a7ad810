"""The feature store: round trips, dtypes, PCA, resumable and concurrent shard writes, S3 outages."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
import xarray as xr
import zarr

from featup.data.manifest import Manifest, ShardInfo
from featup.store import (
    FeatureSpec,
    IncompleteShardError,
    ShardCompleteError,
    ShardWriteError,
    create_feature_store,
    fit_pca,
    open_feature_store,
)

C, H, W = 6, 5, 4


def toy_manifest(counts=(3, 2, 3)) -> Manifest:
    shards = [ShardInfo(f"shard-{i:06d}.tar", n, 0, tuple(f"s{i}k{j}" for j in range(n))) for i, n in enumerate(counts)]
    return Manifest("toy", shards, classes=["a", "b"], url="memory://toy/manifest.json")


def features_for(keys, channels=C, size=(H, W)) -> np.ndarray:
    """Deterministic features per key, so any writer, in any order, writes the same values."""
    return np.stack(
        [
            np.random.default_rng(zlib.crc32(k.encode())).standard_normal((channels, *size), dtype=np.float32)
            for k in keys
        ]
    )


def spec(**over) -> FeatureSpec:
    base = dict(
        dataset="toy", backbone="vit_s16", upsampler="jbu", channels=C, size=(H, W), lowres_size=(2, 2),
        tap="blocks.11", normalization={"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        checkpoint_sha256="ab" * 32,
    )  # fmt: skip
    return FeatureSpec(**{**base, **over})


def write_shard(store, shard, *, bad=(), batch=2):
    keys = store.keys(shard)
    with store.shard_writer(shard) as w:
        good = [k for k in keys if k not in bad]
        for i in range(0, len(good), batch):
            part = good[i : i + batch]
            lowres = features_for(part, size=(2, 2)) if store.spec.lowres_size else None
            w.write(part, features_for(part), lowres)
        for k in bad:
            w.mark_bad(k, "corrupt image")


def test_round_trip_to_dask_and_xarray(storage_root):
    so = storage_root.storage_options
    store = create_feature_store(storage_root.url, spec(), toy_manifest(), storage_options=so)
    assert store.url == storage_root.join("toy", "vit_s16", "jbu")
    assert store.pending_shards() == [0, 1, 2]
    assert store.estimate.features == 8 * C * H * W * 2
    for shard in range(3):
        write_shard(store, shard, bad={"s1k0"} if shard == 1 else ())
    reader = open_feature_store(store.url, storage_options=so)
    assert reader.completed_shards() == [0, 1, 2] and reader.pending_shards() == []
    keys = ["s0k0", "s0k1", "s0k2", "s1k1", "s2k0", "s2k1", "s2k2"]
    np.testing.assert_array_equal(reader.to_dask().compute(), features_for(keys).astype(np.float16))
    ds = reader.to_xarray()
    assert list(ds.sample.values) == keys
    np.testing.assert_array_equal(ds.features.sel(sample="s2k1").values, features_for(["s2k1"])[0].astype(np.float16))
    np.testing.assert_array_equal(ds.lowres.values, features_for(keys, size=(2, 2)).astype(np.float16))
    assert list(ds.shard.values) == [0, 0, 0, 1, 2, 2, 2] and set(ds.status.values) == {1}
    assert ds.attrs["backbone"] == "vit_s16" and ds.attrs["tap"] == "blocks.11" and ds.attrs["upsampler"] == "jbu"
    assert ds.attrs["checkpoint_sha256"] == "ab" * 32 and ds.attrs["normalization"]["std"][0] == 0.229
    assert ds.attrs["size"] == [H, W] and ds.attrs["dtype"] == "float16" and ds.attrs["featup_version"]
    assert [(b.key, b.reason) for b in reader.bad_samples()] == [("s1k0", "corrupt image")]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_dtypes_store_what_torch_would_round_to(tmp_path, dtype):
    store = create_feature_store(str(tmp_path), spec(dtype=dtype, lowres_size=None), toy_manifest((2,)))
    write_shard(store, 0)
    out = store.to_dask().compute()
    assert out.dtype == np.float32
    # torch's own cast is the reference for rounding (round to nearest even)
    expected = torch.from_numpy(features_for(store.keys(0))).to(getattr(torch, dtype)).float().numpy()
    np.testing.assert_array_equal(out, expected)
    raw = zarr.open_group(store.url, mode="r")["features"]
    if dtype == "bfloat16":  # zarr has no bfloat16: the bits are kept as uint16 and say so
        assert raw.dtype == np.uint16 and raw.attrs["featup_dtype"] == "bfloat16"


def test_unwritten_rows_are_nan_and_hidden(tmp_path):
    store = create_feature_store(str(tmp_path), spec(dtype="bfloat16"), toy_manifest())
    write_shard(store, 0)
    everything = store.to_xarray(complete_only=False)
    assert everything.sizes["sample"] == 9  # 3 shards × stride 3
    assert list(everything.status.values) == [1, 1, 1, 0, 0, 0, 0, 0, 0]
    assert np.isnan(everything.features.values[3:]).all() and not np.isnan(everything.features.values[:3]).any()
    assert store.to_xarray().sizes["sample"] == 3


def test_interrupted_shard_stays_invisible_and_rerun_finishes(storage_root):
    so = storage_root.storage_options
    store = create_feature_store(storage_root.url, spec(), toy_manifest(), storage_options=so)
    write_shard(store, 0)
    keys = store.keys(1)
    with pytest.raises(RuntimeError, match="backbone crashed") as failure:
        with store.shard_writer(1) as w:
            w.write(keys[:1], features_for(keys[:1]), features_for(keys[:1], size=(2, 2)))
            raise RuntimeError("backbone crashed")
    assert "was not committed" in failure.value.__notes__[0]
    again = open_feature_store(store.url, mode="a", storage_options=so)
    assert again.completed_shards() == [0] and again.pending_shards() == [1, 2]
    assert list(again.to_xarray().sample.values) == ["s0k0", "s0k1", "s0k2"]  # the half-written row is hidden
    for shard in again.pending_shards():
        write_shard(again, shard)
    assert again.to_xarray().sizes["sample"] == 8


def test_commit_needs_every_sample_written_or_marked_bad(tmp_path):
    store = create_feature_store(str(tmp_path), spec(lowres_size=None), toy_manifest())
    keys = store.keys(0)
    with pytest.raises(IncompleteShardError, match="1 samples neither written nor marked bad"):
        with store.shard_writer(0) as w:
            w.write(keys[:2], features_for(keys[:2]))
            assert w.missing() == keys[2:]
    assert not store.is_complete(0)


def test_complete_shard_is_skipped_unless_redone(tmp_path):
    store = create_feature_store(str(tmp_path), spec(lowres_size=None), toy_manifest())
    write_shard(store, 0)
    with pytest.raises(ShardCompleteError, match="redo=True"):
        store.shard_writer(0)
    keys = store.keys(0)
    with store.shard_writer(0, redo=True) as w:
        w.write(keys, np.zeros((3, C, H, W)))
    assert store.to_dask().compute().max() == 0
    assert store.completed_shards() == [0]


def test_bad_writes_are_refused_with_the_reason(tmp_path):
    store = create_feature_store(str(tmp_path), spec(), toy_manifest())
    w = store.shard_writer(0)
    with pytest.raises(ValueError, match=r"shape \(1, 6, 5, 4\)"):
        w.write(["s0k0"], torch.zeros(1, C + 1, H, W), torch.zeros(1, C, 2, 2))
    with pytest.raises(ValueError, match="'s9k9' is not in shard 0"):
        w.write(["s9k9"], torch.zeros(1, C, H, W), torch.zeros(1, C, 2, 2))
    with pytest.raises(ValueError, match="lowres must be given"):
        w.write(["s0k0"], torch.zeros(1, C, H, W))
    reader = open_feature_store(store.url)
    with pytest.raises(PermissionError, match="mode='a'"):
        reader.shard_writer(1)


def test_create_is_idempotent_and_guards_a_different_store(tmp_path):
    first = create_feature_store(str(tmp_path), spec(), toy_manifest())
    write_shard(first, 0)
    again = create_feature_store(str(tmp_path), spec(), toy_manifest())
    assert again.completed_shards() == [0]  # reopened, not wiped
    with pytest.raises(FileExistsError, match="differs in spec"):
        create_feature_store(str(tmp_path), spec(dtype="float32"), toy_manifest())
    replaced = create_feature_store(str(tmp_path), spec(dtype="float32"), toy_manifest(), overwrite=True)
    assert replaced.completed_shards() == [] and replaced.spec.dtype == "float32"


def test_missing_store_and_size_guard_are_clear(tmp_path, caplog):
    with pytest.raises(FileNotFoundError, match="create_feature_store"):
        open_feature_store(str(tmp_path / "none"))
    big = spec(channels=384, size=(224, 224), lowres_size=None)
    with pytest.raises(ValueError, match="exceeds max_bytes"):
        create_feature_store(str(tmp_path), big, toy_manifest(), max_bytes=10_000)
    assert not (tmp_path / "toy").exists()  # refused before writing anything
    caplog.set_level("INFO", logger="featup.store")
    create_feature_store(str(tmp_path), big, toy_manifest())
    assert "8 samples × 384 ch × 224×224 × float16 (2 B) = 308 MB (294 MiB)" in caplog.text


def test_rows_are_chunk_aligned_per_shard(tmp_path):
    store = create_feature_store(str(tmp_path), spec(rows_per_chunk=2, lowres_size=None), toy_manifest((3, 2, 3)))
    assert store.stride == 4 and [store.rows(i) for i in range(3)] == [range(0, 3), range(4, 6), range(8, 11)]
    write_shard(store, 1)
    chunks = sorted(p.name for p in (tmp_path / "toy" / "vit_s16" / "jbu" / "features" / "c").iterdir())
    assert chunks == ["2"]  # shard 1 touched only its own row chunk (rows 4-5)
    with pytest.raises(IndexError, match="3 shards"):
        store.rows(3)


WRITER = """
import json, sys, time, zlib
from pathlib import Path
import numpy as np
from featup.store import open_feature_store
url, options, shard, sync, rounds = json.loads(sys.argv[1])
store = open_feature_store(url, mode="a", storage_options=options)
features = store.to_dask(complete_only=False)
mine, theirs = store.rows(shard), store.rows(1 - shard)

def barrier(name):  # both processes leave it together, so their writes below really race
    Path(sync, f"{name}-{shard}").touch()
    while not Path(sync, f"{name}-{1 - shard}").exists():
        time.sleep(0.0002)

def values(rows, r):
    return np.stack([np.full((6, 5, 4), 1000 * i + r, np.float16) for i in rows])

lost = []
with store.shard_writer(shard) as writer:
    for r in range(rounds):
        barrier(f"write{r}")
        writer.write(store.keys(shard), values(mine, r))
        barrier(f"check{r}")
        for rows in (mine, theirs):
            if not np.array_equal(features[rows.start : rows.stop].compute(), values(rows, r)):
                lost.append((r, rows.start))
        barrier(f"next{r}")
print(json.dumps(lost))
"""


def test_two_processes_writing_neighbouring_shards_never_lose_each_others_rows(storage_root, tmp_path):
    so = storage_root.storage_options
    # odd shard sizes and 2-row chunks: shards 0 and 1 would share the chunk of rows 2-3 without the
    # chunk-aligned layout, and then one writer's read-modify-write would undo the other's rows
    store = create_feature_store(
        storage_root.url, spec(rows_per_chunk=2, lowres_size=None), toy_manifest((3, 3)), storage_options=so
    )
    rounds = 12
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, json.dumps([store.url, so, shard, str(tmp_path), rounds])],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for shard in (0, 1)
    ]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()[-2000:]
        assert json.loads(out) == []  # after every round, both shards' rows held what their writer wrote
    assert store.completed_shards() == [0, 1]
    final = np.stack([np.full((C, H, W), 1000 * i + rounds - 1, np.float16) for i in [0, 1, 2, 4, 5, 6]])
    np.testing.assert_array_equal(store.to_dask().compute(), final)


def test_pca_store_keeps_k_coefficients_and_reconstructs(tmp_path):
    rng = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(16, 3, generator=rng)).Q  # 16 channels spanning 3 directions
    feats = torch.einsum("ck,bkhw->bchw", basis, torch.randn(3, 3, H, W, generator=rng)) + 0.5
    pca = fit_pca(feats, 3)
    store = create_feature_store(
        str(tmp_path),
        spec(channels=16, pca_components=3, dtype="float32", lowres_size=None),
        toy_manifest((3,)),
        pca=pca,
    )
    with store.shard_writer(0) as w:
        w.write(store.keys(0), feats)
    assert store.to_dask().shape == (3, 3, H, W)
    np.testing.assert_allclose(store.to_dask(reconstruct_pca=True).compute(), feats.numpy(), atol=1e-4)
    assert pca.explained_variance_ratio.sum() == pytest.approx(1.0, abs=1e-5)
    ds = store.to_xarray(reconstruct_pca=True)
    assert ds.features.dims == ("sample", "channel", "y", "x") and ds.sizes["channel"] == 16
    np.testing.assert_allclose(open_feature_store(store.url).pca().components, pca.components)
    with pytest.raises(ValueError, match="needs pca=fit_pca"):
        create_feature_store(str(tmp_path / "x"), spec(channels=16, pca_components=4), toy_manifest())


def test_plain_zarr_and_xarray_can_open_the_store(tmp_path):
    store = create_feature_store(str(tmp_path), spec(), toy_manifest())
    write_shard(store, 0)
    ds = xr.open_zarr(store.url, zarr_format=3, consolidated=False)
    assert ds.features.dims == ("sample", "channel", "y", "x") and ds.sizes["sample"] == 9
    assert list(ds["keys"].values[:3]) == ["s0k0", "s0k1", "s0k2"]


def test_s3_outage_mid_shard_then_rerun_equals_a_clean_run(moto_factory):
    """Kill the S3 server while shard 2 is half written, bring it back with its data, re-run pending shards."""
    server = moto_factory(recording=True)  # moto is in-memory: the recording lets a restart keep the objects
    so = server.storage_options()
    fail_fast = {**so, "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 2}}
    faulty_root, clean_root = server.new_bucket(), server.new_bucket()
    manifest = toy_manifest((3, 3, 3, 3))
    store = create_feature_store(faulty_root, spec(), manifest, storage_options=fail_fast)
    write_shard(store, 0)
    write_shard(store, 1)
    keys = store.keys(2)
    writer = store.shard_writer(2)
    writer.write(keys[:1], features_for(keys[:1]), features_for(keys[:1], size=(2, 2)))
    server.stop(signal.SIGKILL)
    with pytest.raises(ShardWriteError, match="nothing was committed for this shard"):
        with writer:
            writer.write(keys[1:], features_for(keys[1:]), features_for(keys[1:], size=(2, 2)))
    server.start()
    server.replay()
    resumed = open_feature_store(store.url, mode="a", storage_options=so)
    assert resumed.completed_shards() == [0, 1] and resumed.pending_shards() == [2, 3]
    for shard in resumed.pending_shards():
        write_shard(resumed, shard)
    clean = create_feature_store(clean_root, spec(), manifest, storage_options=so)
    for shard in range(4):
        write_shard(clean, shard)
    got, want = resumed.to_xarray(complete_only=False), clean.to_xarray(complete_only=False)
    assert got.drop_attrs().identical(want.drop_attrs())  # same rows, keys, status, values: none lost or doubled
    assert list(got.status.values) == [1] * 12
