import pytest
import torch

from featup.pipeline import cpu_threads

CPU = torch.device("cpu")


def test_model_threads_apply_inside_the_shard_and_are_restored_after():
    before = torch.get_num_threads()
    with cpu_threads(CPU, 1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_model_threads_leave_gpus_and_the_default_alone_and_reject_zero():
    before = torch.get_num_threads()
    with cpu_threads(torch.device("cuda"), 1), cpu_threads(CPU, None):
        assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="at least 1"), cpu_threads(CPU, 0):
        pass


# --- one damaged or missing shard never stops a dataset; unreachable storage never looks like damage ---

import io  # noqa: E402
import os  # noqa: E402
import tarfile  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from featup.backbones import load_backbone  # noqa: E402
from featup.data import ingest  # noqa: E402
from featup.data.reading import iter_shard, open_shards  # noqa: E402
from featup.io import StorageRoot, TransientError, is_transient  # noqa: E402
from featup.pipeline import precompute_shard  # noqa: E402
from featup.store import FeatureSpec, create_feature_store  # noqa: E402
from featup.upsamplers import load_upsampler  # noqa: E402

SIZE = 32


@pytest.fixture(scope="module")
def backbone():
    return load_backbone("efficientnet_lite0")


def _dataset(url: str, storage_options=None):
    """6 mosaics in 3 shards of 2."""
    return ingest("fashion_mosaics", "-", url, n=6, size=SIZE, max_count=2, progress=False,
                  storage_options=storage_options)


def _store(root: str, manifest, backbone, storage_options=None):
    spec = FeatureSpec(dataset="m", backbone=backbone.id, upsampler="bilinear", channels=backbone.dim,
                       size=(SIZE, SIZE), dtype="float32")
    return create_feature_store(root, spec, manifest, storage_options=storage_options)


def _run(store, shard, backbone, source=None, num_workers=0):
    return precompute_shard(store, shard, backbone, load_upsampler("bilinear"), device="cpu", num_workers=num_workers,
                            batch_size=1, source=source)


def _add_member(tar_path: Path, name: str) -> None:
    """Rewrite a shard with one more member, as someone adding a file to it by hand would."""
    with tarfile.open(tar_path) as old:
        members = [(m, old.extractfile(m).read()) for m in old.getmembers()]
    buf = io.BytesIO()
    Image.fromarray(np.full((SIZE, SIZE, 3), 90, np.uint8)).save(buf, format="JPEG")
    with tarfile.open(tar_path, "w") as new:
        for member, data in [*members, (tarfile.TarInfo(name), buf.getvalue())]:
            member.size = len(data)
            new.addfile(member, io.BytesIO(data))


def test_cut_missing_and_extended_shards_keep_what_is_readable_and_complete(tmp_path, backbone):
    manifest = _dataset(str(tmp_path / "shards"))
    shard0, shard1, shard2 = (tmp_path / "shards" / s.name for s in manifest.shards)
    _add_member(shard0, "../../evil.jpg")
    # cut shard 1 in the middle of its second image: the first sample stays readable
    with tarfile.open(shard1) as tar:
        image = next(m for m in tar.getmembers() if m.name == f"{manifest.shards[1].keys[1]}.jpg")
    shard1.write_bytes(shard1.read_bytes()[: image.offset_data + image.size // 2])
    os.remove(shard2)
    store = _store(str(tmp_path / "store"), manifest, backbone)

    reports = [_run(store, i, backbone) for i in range(3)]
    assert store.pending_shards() == [], "every shard completes, damaged or not"
    assert reports[0].written == 2 and reports[0].bad == []
    assert [u["key"] for u in reports[0].unlisted] == ["../../evil"]
    assert reports[1].written == 1 and len(reports[1].bad) == 1 and reports[1].shard_error
    assert reports[2].written == 0 and len(reports[2].bad) == 2
    assert "FileNotFoundError" in reports[2].shard_error
    bad = {b.key: b.reason for b in store.bad_samples()}
    assert set(bad) == {*manifest.shards[1].keys[1:], *manifest.shards[2].keys}
    assert all("shard unreadable" in reason or "cut short" in reason for reason in bad.values()), bad
    assert store.status().tolist().count(1) == 3  # the readable samples were written


def test_unreachable_storage_leaves_the_shard_pending_and_a_rerun_finishes(tmp_path, backbone, moto_factory):
    server = moto_factory()
    bucket = server.new_bucket()
    options = server.storage_options()
    manifest = _dataset(f"{bucket}/shards", options)
    store = _store(str(tmp_path / "store"), manifest, backbone)
    server.stop()  # storage down: reading fails, which is not damage
    with pytest.raises(TransientError, match="reading s3://"):
        list(iter_shard(manifest.shard_urls()[0], storage_options=options))
    source = StorageRoot(f"{bucket}/shards", options)  # the shards' own storage, not the store's
    with pytest.raises(Exception) as failed:
        _run(store, 0, backbone, source)
    assert is_transient(failed.value), failed.value
    assert store.pending_shards() == [0, 1, 2] and store.bad_samples() == []
    server.start()  # back, empty (moto keeps nothing): the same shards are put back, byte for byte
    import s3fs

    s3fs.S3FileSystem(**options).mkdir(bucket.removeprefix("s3://"))
    assert _dataset(f"{bucket}/shards", options).shards == manifest.shards
    assert _run(store, 0, backbone, source).written == 2
    assert store.pending_shards() == [1, 2] and store.bad_samples() == []


# --- the implicit upsampler in the pipeline: a batch fitted at once, each image as if fitted alone ---


def test_implicit_per_image_fits_the_batch_at_once_and_matches_single_fits(backbone):
    from featup.pipeline import ImplicitPerImage, featurize
    from featup.training import fit_implicit

    torch.manual_seed(0)
    images = torch.rand(2, 3, SIZE, SIZE)
    options = {"steps": 2, "seed": 3}
    with torch.no_grad():
        low, high = featurize(backbone, ImplicitPerImage(backbone, **options), images, (48, 48))
    assert high.shape == (2, backbone.dim, 48, 48) and torch.isfinite(high).all()
    for i in range(2):
        alone = fit_implicit(images[i], backbone, progress=False, steps=2, seed=3 + i)
        with torch.no_grad():
            expected = alone(low[i : i + 1], images[i : i + 1], (48, 48))
        torch.testing.assert_close(high[i : i + 1], expected, rtol=1e-3, atol=1e-3)


# --- num_workers decodes in threads; features are cast to the stored dtype on the device ---


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_decode_threads_and_device_casts_store_what_float32_features_round_to(tmp_path, backbone, dtype):
    from featup.pipeline import featurize
    from featup.store import encoding, open_feature_store

    manifest = _dataset(str(tmp_path / "shards"))
    spec = FeatureSpec(dataset="m", backbone=backbone.id, upsampler="bilinear", channels=backbone.dim,
                       size=(SIZE, SIZE), dtype=dtype, lowres_size=(SIZE // 16, SIZE // 16))
    inline, threaded = (create_feature_store(str(tmp_path / name), spec, manifest) for name in ("inline", "threads"))
    assert _run(inline, 0, backbone).written == 2
    report = _run(threaded, 0, backbone, num_workers=3)
    assert report.written == 2 and report.bad == []
    a, b = (open_feature_store(s.url).to_xarray() for s in (inline, threaded))
    np.testing.assert_array_equal(a.features.values, b.features.values)
    # what the old path stored: float32 features rounded on the host (batches of 1, like the runs above)
    pairs = [featurize(backbone, load_upsampler("bilinear"), s["image"][None], (SIZE, SIZE))
             for s in open_shards(manifest.url, size=SIZE, shards=[0])]
    low, high = (torch.cat(part) for part in zip(*pairs, strict=True))
    stored = np.asarray(inline._array("features")[0:2])
    np.testing.assert_array_equal(stored, encoding.encode(high, dtype))
    np.testing.assert_array_equal(np.asarray(inline._array("lowres")[0:2]), encoding.encode(low, dtype))


def test_precompute_options_reject_what_cannot_run():
    from featup.pipeline import PrecomputeOptions

    with pytest.raises(ValueError, match="num_workers"):
        PrecomputeOptions(num_workers=-1)
    with pytest.raises(ValueError, match="amp must be one of"):
        PrecomputeOptions(amp="int8")
    assert PrecomputeOptions(num_workers=4).run_options()["num_workers"] == 4


def test_the_reader_thread_hands_its_error_over_and_ends_with_the_consumer():
    from featup.pipeline.shard import _ahead

    def cut():
        yield 1
        yield 2
        raise OSError("shard cut")

    batches = _ahead(cut())
    assert [next(batches), next(batches)] == [1, 2]
    with pytest.raises(OSError, match="shard cut"):
        next(batches)

    closed = []

    def endless():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.append(True)

    batches = _ahead(endless(), depth=1)
    assert next(batches) == 0
    batches.close()  # the consumer stops while the reader waits on a full queue: no hang, the source is closed
    assert closed == [True]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_on_cuda_pinned_non_blocking_copies_store_what_the_cpu_stores(tmp_path, backbone, dtype):
    """The GPU path (pinned images, cast on the device, non-blocking copies waited on by the writer)."""
    from featup.store import open_feature_store

    manifest = _dataset(str(tmp_path / "shards"))
    spec = FeatureSpec(dataset="m", backbone=backbone.id, upsampler="bilinear", channels=backbone.dim,
                       size=(SIZE, SIZE), dtype=dtype)
    stores = {}
    for device in ("cpu", "cuda"):
        stores[device] = create_feature_store(str(tmp_path / device), spec, manifest)
        report = precompute_shard(stores[device], 0, backbone, load_upsampler("bilinear"), device=device,
                                  num_workers=2, batch_size=2)
        assert report.written == 2
    cpu, cuda = (open_feature_store(s.url).to_xarray().features.values for s in stores.values())
    np.testing.assert_allclose(cuda, cpu, rtol=2e-2, atol=2e-2)


def test_models_rebuilt_from_a_spec_are_the_ones_it_records_and_other_weights_are_refused(tmp_path, backbone):
    from featup.checkpoints import save_checkpoint
    from featup.pipeline import build_models, feature_spec
    from featup.upsamplers import create_upsampler

    upsampler = load_upsampler("jbu", backbone=backbone.id, dim=backbone.dim)
    spec = feature_spec("m", backbone, "jbu", upsampler, size=(SIZE, SIZE))
    rebuilt, up = build_models(spec)
    assert rebuilt.weights_sha256 == backbone.weights_sha256 and rebuilt.tap == spec.tap
    torch.testing.assert_close(up.state_dict(), upsampler.state_dict())
    other = tmp_path / "other.pt"
    save_checkpoint(other, create_upsampler("jbu", dim=backbone.dim), {"backbone": backbone.id})
    with pytest.raises(ValueError, match="the store was made with"):
        build_models(spec, checkpoint=StorageRoot(str(other)))
    stride32 = load_backbone("efficientnet_lite0", tap="stride32")
    spec32 = feature_spec("m", stride32, "bilinear", load_upsampler("bilinear"), size=(SIZE, SIZE))
    assert spec32.backbone == "efficientnet_lite0-stride32"
    assert build_models(spec32)[0].tap == "stride32"


def test_a_spec_records_how_the_upsampler_was_built_and_refuses_it_built_otherwise(backbone):
    from featup.pipeline import build_models, check_models, feature_spec

    shipped = load_upsampler("jbu", backbone=backbone.id, dim=backbone.dim)
    stepped = load_upsampler("jbu", backbone=backbone.id, dim=backbone.dim, back_projection=0.5)
    spec = feature_spec("m", backbone, "jbu", stepped, size=(SIZE, SIZE))
    assert spec.extra["upsampler_kwargs"] == {"range_kernel": "distance", "back_projection": 0.5}
    assert build_models(spec)[1].back_projection == 0.5  # the shipped checkpoint records none
    with pytest.raises(ValueError, match=r"built with \{'range_kernel': 'distance'\}, the store was made with"):
        check_models(spec, backbone, shipped)
