"""The sample contract: keys webdataset can carry, fields of the right kinds."""

from __future__ import annotations

import numpy as np
import pytest

from featup.data.samples import BadSample, check_key, check_sample


def sample(**over):
    base = {
        "__key__": "img_001",
        "image": np.zeros((4, 5, 3), np.uint8),
        "label": np.zeros((4, 5), np.uint8),
        "depth": np.zeros((4, 5), np.float32),
        "meta": {"a": 1},
    }
    return {**base, **over}


@pytest.mark.parametrize("key", ["a", "train/000001", "ADE_train_00000001", "x-y_z"])
def test_good_keys_pass(key):
    assert check_key(key) == key


@pytest.mark.parametrize("key", ["", "a.b", "__meta__", " lead", None, 3])
def test_keys_webdataset_would_mangle_are_refused_with_a_fix(key):
    with pytest.raises(ValueError, match="replace dots"):
        check_key(key)


def test_a_full_sample_passes():
    check_sample(sample())
    check_sample(sample(label=None, depth=None))


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"image": np.zeros((4, 5), np.uint8)}, "uint8 H×W×3"),
        ({"image": np.zeros((4, 5, 3), np.float32)}, "uint8 H×W×3"),
        ({"label": np.zeros((4, 6), np.uint8)}, "must match"),
        ({"label": np.zeros((4, 5), np.float32)}, "integer H×W"),
        ({"label": np.full((4, 5), -1, np.int32)}, "0..65535"),
        ({"depth": np.zeros((3, 5), np.float32)}, "'depth'"),
        ({"meta": {"x": object()}}, "JSON-serialisable"),
    ],
)
def test_broken_samples_name_the_field(over, message):
    with pytest.raises(ValueError, match=message):
        check_sample(sample(**over))


def test_bad_sample_reads_well_and_serialises():
    bad = BadSample("k1", "/data/k1.jpg", "truncated")
    assert str(bad) == "k1 (/data/k1.jpg): truncated"
    assert BadSample(**bad.to_dict()) == bad
