"""Reading shards into tensors: sizes, resampling, bad samples, DataLoader workers, local disk and S3."""

from __future__ import annotations

import io
import json
import logging
import tarfile

import numpy as np
import pytest
import torch
import webdataset as wds

from featup.data.reading import (
    DecodeSample,
    collate_samples,
    decode_in_threads,
    iter_shard,
    make_loader,
    open_shards,
    shard_urls,
)
from featup.data.samples import BadSample
from featup.data.shards import write_shards
from featup.data.storage import register_gopen_schemes
from featup.io import TransientError, filesystem


def write_toy(url, n=6, *, size=(20, 30), max_count=3, storage_options=None):
    rng = np.random.default_rng(0)
    h, w = size
    samples = [
        {
            "__key__": f"k{i:03d}",
            "image": rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
            "label": np.where(rng.random((h, w)) < 0.2, 255, rng.integers(0, 3, (h, w))).astype(np.uint8),
            "depth": rng.uniform(1, 2, (h, w)).astype(np.float32),
            "meta": {"i": i},
        }
        for i in range(n)
    ]
    manifest = write_shards(
        samples, url, max_count=max_count, image_format="png", storage_options=storage_options, progress=False
    )
    return manifest, samples


def write_raw_tar(path, members):
    """A tar of (name, bytes) members, written as is (no checks), like a shard made by another tool."""
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_samples_decode_to_tensors_at_the_requested_size(storage_root):
    so = storage_root.storage_options
    manifest, originals = write_toy(storage_root.join("toy"), storage_options=so)
    items = list(open_shards(storage_root.join("toy"), size=(8, 12), storage_options=so))
    assert [s["__key__"] for s in items] == [s["__key__"] for s in originals]
    first = items[0]
    assert first["image"].dtype == torch.float32 and first["image"].shape == (3, 8, 12)
    assert 0 <= first["image"].min() and first["image"].max() <= 1
    assert first["label"].dtype == torch.int64 and first["label"].shape == (8, 12)
    assert first["depth"].dtype == torch.float32 and first["depth"].shape == (8, 12)
    assert first["meta"] == {"i": 0}
    assert first["__url__"] == manifest.shard_urls()[0]


def test_native_size_reads_pixels_exactly(tmp_path):
    _, originals = write_toy(str(tmp_path / "toy"), n=2)
    items = list(open_shards(str(tmp_path / "toy"), size=None))
    image = (items[1]["image"] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(image, originals[1]["image"])  # PNG shards are lossless
    np.testing.assert_array_equal(items[1]["label"].numpy(), originals[1]["label"])


def test_labels_resize_nearest_and_keep_ignore(tmp_path):
    _, originals = write_toy(str(tmp_path / "toy"), n=3)
    for item, original in zip(open_shards(str(tmp_path / "toy"), size=7), originals, strict=True):
        values = set(item["label"].unique().tolist())
        assert values <= set(np.unique(original["label"]).tolist())  # no blended class ids
        assert 255 in set(np.unique(original["label"]).tolist())


def test_depth_nearest_keeps_values_bilinear_blends(tmp_path):
    _, originals = write_toy(str(tmp_path / "toy"), n=1)
    src = set(originals[0]["depth"].ravel().tolist())
    nearest = next(iter(open_shards(str(tmp_path / "toy"), size=9)))["depth"]
    bilinear = next(iter(open_shards(str(tmp_path / "toy"), size=9, depth_interpolation="bilinear")))["depth"]
    assert set(nearest.ravel().tolist()) <= src
    assert not set(bilinear.ravel().tolist()) <= src


def test_crop_keeps_the_centre_stretch_keeps_everything(tmp_path):
    image = np.zeros((40, 80, 3), np.uint8)
    image[:, :20, 0] = 255  # red left quarter
    image[:, 20:60, 1] = 255  # green middle half
    image[:, 60:, 2] = 255  # blue right quarter
    write_shards(
        [{"__key__": "bars", "image": image, "label": None, "depth": None, "meta": {}}],
        str(tmp_path / "b"),
        image_format="png",
        progress=False,
    )
    crop = next(iter(open_shards(str(tmp_path / "b"), size=20)))["image"]
    stretch = next(iter(open_shards(str(tmp_path / "b"), size=20, fit="stretch")))["image"]
    # the centred square is green (its edge columns blend a little of the neighbours, as antialiasing does)
    assert crop[1, :, 1:-1].min() > 0.99 and crop[0, :, 1:-1].max() < 0.01 and crop[2, :, 1:-1].max() < 0.01
    assert stretch[0, :, 0].min() > 0.99 and stretch[2, :, -1].min() > 0.99  # red at left, blue at right


@pytest.mark.parametrize("target", [(16, 16), (7, 13), (224, 224)])
def test_every_aspect_ratio_resizes(target):
    """Sizes whose scale factors do not divide evenly (49×60 → 16²) must not push the crop off the image."""
    from PIL import Image

    decode = DecodeSample(target)
    for h0, w0 in [(49, 60), (16, 97), (97, 16), (33, 33), (480, 640), (427, 640)]:
        buf = io.BytesIO()
        Image.fromarray(np.zeros((h0, w0, 3), np.uint8)).save(buf, format="PNG")
        out = decode({"__key__": "k", "png": buf.getvalue()})
        assert not isinstance(out, BadSample), out
        assert out["image"].shape == (3, *target)


def test_every_odd_image_is_converted_or_reported_and_the_shard_goes_on(tmp_path, image_zoo):
    names = list(image_zoo)
    write_raw_tar(tmp_path / "zoo.tar", [(f"{n}.png", image_zoo[n]) for n in names])
    items = list(open_shards(str(tmp_path / "zoo.tar"), size=16))
    assert [i.key if isinstance(i, BadSample) else i["__key__"] for i in items] == names
    bad = {i.key: i.reason for i in items if isinstance(i, BadSample)}
    assert set(bad) == {"tiny_png", "float_tiff", "truncated_jpg", "corrupt", "empty"}
    assert "smaller than min_side" in bad["tiny_png"] and "truncated" in bad["truncated_jpg"]
    good = [i for i in items if not isinstance(i, BadSample)]
    assert all(i["image"].shape == (3, 16, 16) for i in good)
    assert next(i for i in good if i["__key__"] == "cmyk_jpg")["meta"]["read_conversions"] == ["CMYK → RGB"]


def test_sample_without_image_or_with_mismatched_label_is_reported(tmp_path, image_zoo):
    label = io.BytesIO()
    from PIL import Image

    Image.fromarray(np.zeros((5, 5), np.uint8)).save(label, format="PNG")
    write_raw_tar(
        tmp_path / "s.tar",
        [("a.json", json.dumps({}).encode()), ("b.png", image_zoo["rgb_png"]), ("b.label.png", label.getvalue())],
    )
    items = list(open_shards(str(tmp_path / "s.tar"), size=16))
    assert [type(i) for i in items] == [BadSample, BadSample]
    assert "no image" in items[0].reason and "label map is 5×5" in items[1].reason


def test_truncated_shard_yields_what_precedes_the_damage(tmp_path):
    manifest, _ = write_toy(str(tmp_path / "toy"), n=3, max_count=3)
    path = tmp_path / "toy" / manifest.shards[0].name
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.8)])
    items = list(iter_shard(str(path)))
    good = [i for i in items if not isinstance(i, BadSample)]
    bad = [i for i in items if isinstance(i, BadSample)]
    assert [g["__key__"] for g in good] == ["k000", "k001"]
    assert bad[0].key == "k002" and "cut short" in bad[0].reason
    assert bad[-1].key is None and "shard unreadable after 2 samples" in bad[-1].reason


def test_missing_shard_is_reported_and_the_next_shard_still_read(tmp_path):
    manifest, _ = write_toy(str(tmp_path / "toy"), n=6, max_count=3)
    urls = [str(tmp_path / "toy" / "gone.tar"), manifest.shard_urls()[1]]
    items = list(open_shards(urls, size=8))
    assert isinstance(items[0], BadSample) and "FileNotFoundError" in items[0].reason
    assert [i["__key__"] for i in items[1:]] == ["k003", "k004", "k005"]


def test_dataloader_workers_read_every_sample_once(storage_root, image_zoo):
    so = storage_root.storage_options
    manifest, originals = write_toy(storage_root.join("toy"), n=10, max_count=3, storage_options=so)
    fs, path = filesystem(storage_root.join("toy", "zoo.tar"), so)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in ("corrupt", "rgb_jpg"):
            info = tarfile.TarInfo(f"{name}.jpg")
            info.size = len(image_zoo[name])
            tar.addfile(info, io.BytesIO(image_zoo[name]))
    fs.pipe_file(path, buf.getvalue())
    source = [*manifest.shard_urls(), storage_root.join("toy", "zoo.tar")]
    loader = make_loader(source, size=8, batch_size=2, num_workers=2, storage_options=so)
    keys, bad = [], []
    for batch in loader:
        assert batch["image"].shape[1:] == (3, 8, 8) and batch["image"].shape[0] == len(batch["__key__"])
        keys += batch["__key__"]
        bad += batch["bad"]
    assert sorted(keys) == sorted([s["__key__"] for s in originals] + ["rgb_jpg"])
    assert [b.key for b in bad] == ["corrupt"] and "not a readable image" in bad[0].reason


def test_collate_fills_missing_labels_and_handles_all_bad_batches():
    good = {
        "__key__": "a",
        "__url__": "u",
        "image": torch.zeros(3, 4, 4),
        "label": torch.ones(4, 4, dtype=torch.long),
        "depth": None,
        "meta": {},
    }
    other = {**good, "__key__": "b", "label": None}
    batch = collate_samples([good, other, BadSample("c", "u", "corrupt")])
    assert batch["label"][1].eq(255).all() and batch["label"][0].eq(1).all()
    assert batch["depth"] is None and [b.key for b in batch["bad"]] == ["c"]
    empty = collate_samples([BadSample("c", "u", "corrupt")], size=4)
    assert empty["image"].shape == (0, 3, 4, 4) and empty["__key__"] == []
    with pytest.raises(ValueError, match="pass size="):
        collate_samples([good, {**other, "image": torch.zeros(3, 5, 5)}])


def test_shard_urls_from_manifest_pattern_list_and_index(tmp_path):
    manifest, _ = write_toy(str(tmp_path / "toy"), n=7, max_count=3)
    urls = manifest.shard_urls()
    assert shard_urls(str(tmp_path / "toy")) == urls
    assert shard_urls(str(tmp_path / "toy" / "manifest.json"), shards=[2]) == [urls[2]]
    assert shard_urls(str(tmp_path / "toy" / "shard-{000000..000001}.tar")) == urls[:2]
    with pytest.raises(IndexError, match="3 shards exist"):
        shard_urls(str(tmp_path / "toy"), shards=[5])


def test_plain_webdataset_reads_s3_after_registering_fsspec(s3_server, s3_bucket, monkeypatch):
    so = s3_server.storage_options()
    manifest, _ = write_toy(f"{s3_bucket}/toy", n=2, storage_options=so)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", so["key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", so["secret"])
    monkeypatch.setenv("AWS_ENDPOINT_URL", so["endpoint_url"])
    register_gopen_schemes()
    keys = [s["__key__"] for s in wds.WebDataset(manifest.shard_urls()[0], shardshuffle=False)]
    assert keys == ["k000", "k001"]


def test_secrets_never_reach_logs_or_errors(s3_server, s3_bucket, caplog):
    secret = "SUPERSECRET-do-not-log-42"
    so = {
        "key": "testing",
        "secret": secret,
        "endpoint_url": "http://127.0.0.1:9",
        "config_kwargs": {"retries": {"max_attempts": 1}},
    }
    caplog.set_level(logging.INFO)
    # an unreachable endpoint is a fault that passes: raised (for a retry), not recorded as bad samples
    with pytest.raises(TransientError) as unreachable:
        list(open_shards([f"{s3_bucket}/x.tar"], size=8, storage_options=so))
    with pytest.raises(Exception) as failure:
        shard_urls(f"{s3_bucket}/toy", storage_options=so)
    pipeline = open_shards([f"{s3_bucket}/x.tar"], storage_options=so)
    texts = [caplog.text, str(failure.value), repr(failure.value), str(unreachable.value),
             repr(unreachable.value), repr(pipeline.pipeline)]
    assert all(secret not in t for t in texts)


def test_decode_in_threads_runs_workers_at_once_and_keeps_the_order():
    import threading

    together = threading.Barrier(3, timeout=20)  # passes only when three decodes run at the same time
    names = set()

    def decode(i):
        names.add(threading.current_thread().name)
        if i < 3:
            together.wait()
        return i * 10

    assert list(decode_in_threads(range(12), decode, 3)) == [i * 10 for i in range(12)]
    assert len(names) == 3 and all(n.startswith("featup-decode") for n in names)
    with pytest.raises(ValueError, match="at least 1"):
        next(decode_in_threads(range(2), decode, 0))


def test_decode_in_threads_reads_a_bounded_distance_ahead():
    read = []

    def raw():
        for i in range(100):
            read.append(i)
            yield i

    decoded = decode_in_threads(raw(), lambda i: i, 2)
    assert next(decoded) == 0
    assert len(read) <= 2 * 2 + 1, "a shard is never read into memory whole"
