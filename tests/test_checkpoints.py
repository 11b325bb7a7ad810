"""featup.checkpoints: save/load over local disk, S3 and memory://, provenance hashes."""

import io
import uuid

import pytest
import torch
from torch import nn

from featup.checkpoints import (
    checkpoint_hash,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from featup.upsamplers import create_upsampler, load_upsampler, shipped_checkpoint


def small_module(seed: int = 0) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    module = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    with torch.no_grad():
        for tensor in module.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=generator))
    return module


# --- featup checkpoints --------------------------------------------------------------------------


def test_round_trip_local_and_s3(storage_root):
    module = small_module()
    url = storage_root.join("nested", "model.pt")
    metadata = {"backbone": "vit", "steps": 2000, "lr": 1e-3, "sizes": [224, 448], "note": None, "extra": {"a": True}}
    digest = save_checkpoint(url, module, metadata, storage_options=storage_root.storage_options)
    state_dict, loaded_metadata = load_checkpoint(url, storage_options=storage_root.storage_options)
    assert loaded_metadata == metadata
    assert digest == checkpoint_hash(module.state_dict()) == checkpoint_hash(state_dict)
    torch.testing.assert_close(state_dict, module.state_dict(), rtol=0, atol=0)


def test_round_trip_memory_url():
    url = f"memory://featup-tests/{uuid.uuid4().hex}/model.pt"
    module = small_module()
    save_checkpoint(url, module, {"backbone": "vit"})
    state_dict, metadata = load_checkpoint(url)
    assert metadata == {"backbone": "vit"}
    torch.testing.assert_close(state_dict, module.state_dict(), rtol=0, atol=0)


def test_upsampler_config_saved_with_the_weights(tmp_path):
    model = create_upsampler("jbu", dim=8, num_layers=3)
    save_checkpoint(tmp_path / "jbu.pt", model, {"backbone": "dino16"})
    _, metadata = load_checkpoint(tmp_path / "jbu.pt")
    assert metadata == {
        "upsampler": "jbu",
        "dim": 8,
        "upsampler_kwargs": {"num_layers": 3},
        "backbone": "dino16",
    }


def test_hash_is_stable_and_sensitive():
    state = {"b": torch.arange(4, dtype=torch.float32), "a": torch.ones(2, 2, dtype=torch.bfloat16)}
    # Pinned: provenance hashes recorded elsewhere must keep meaning the same weights.
    expected = "b305e76969d877e874db6d97fb8ebadb8d97db9d569155db63cd5d13b0cb9405"
    digest = checkpoint_hash(state)
    assert digest == checkpoint_hash({"a": state["a"].clone(), "b": state["b"].clone()})
    assert len(digest) == 64
    assert digest != checkpoint_hash({**state, "b": torch.tensor([0.0, 1.0, 2.0, 3.5])})
    assert digest != checkpoint_hash({**state, "b": state["b"].double()})
    assert digest != checkpoint_hash({**state, "b": state["b"].reshape(2, 2)})
    assert digest != checkpoint_hash({"c": state["b"], "a": state["a"]})
    assert digest == expected


def test_corrupt_checkpoint_detected(tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint(path, small_module(), {})
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["0.weight"][0, 0] += 1.0
    torch.save(payload, path)
    with pytest.raises(ValueError, match="is corrupt: its weights hash to"):
        load_checkpoint(path)


def test_metadata_that_cannot_load_back_rejected(tmp_path):
    path = tmp_path / "model.pt"
    with pytest.raises(TypeError, match=r"metadata\['lr'\] of type Tensor"):
        save_checkpoint(path, small_module(), {"lr": torch.tensor(1e-3)})
    with pytest.raises(TypeError, match=r"metadata\['dirs'\]\[0\] of type PosixPath"):
        save_checkpoint(path, small_module(), {"dirs": [tmp_path]})
    assert not path.exists()


def test_bare_state_dict_loads_without_metadata(tmp_path):
    module = small_module()
    torch.save(module.state_dict(), tmp_path / "bare.pt")
    state_dict, metadata = load_checkpoint(tmp_path / "bare.pt")
    assert metadata == {}
    torch.testing.assert_close(state_dict, module.state_dict())


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at .*absent.pt"):
        load_checkpoint(tmp_path / "absent.pt")


def test_not_a_checkpoint_rejected(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=r"cannot read .*junk.pt with torch.load\(weights_only=True\)"):
        load_checkpoint(tmp_path / "junk.pt")


def test_pickled_code_refused(tmp_path):
    torch.save({"state_dict": {}, "callback": io.BytesIO()}, tmp_path / "unsafe.pt")
    with pytest.raises(ValueError, match="weights_only=True"):
        load_checkpoint(tmp_path / "unsafe.pt")


# --- provenance: a loaded upsampler says which weights it holds ----------------------------------


def test_read_checkpoint_gives_the_hash_save_returned_and_hashes_bare_state_dicts(tmp_path):
    module = small_module()
    digest = save_checkpoint(tmp_path / "m.pt", module)
    assert read_checkpoint(tmp_path / "m.pt").sha256 == digest
    torch.save(module.state_dict(), tmp_path / "bare.pt")
    assert read_checkpoint(tmp_path / "bare.pt").sha256 == digest == checkpoint_hash(module.state_dict())


def test_a_loaded_upsampler_carries_its_checkpoints_sha256_the_shipped_default_included(tmp_path):
    model = create_upsampler("jbu", dim=6)
    digest = save_checkpoint(tmp_path / "jbu.pt", model)
    assert load_upsampler("jbu", checkpoint=tmp_path / "jbu.pt").upsampler_cfg["checkpoint_sha256"] == digest
    assert load_upsampler("jbu", checkpoint=model.state_dict(), dim=6).upsampler_cfg["checkpoint_sha256"] == digest
    shipped = load_upsampler("jbu", backbone="efficientnet_lite0")
    assert shipped.upsampler_cfg["checkpoint_sha256"] == read_checkpoint(
        shipped_checkpoint("jbu", "efficientnet_lite0")).sha256
    assert "checkpoint_sha256" not in load_upsampler("bilinear").upsampler_cfg  # nothing was loaded
