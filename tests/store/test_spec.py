"""FeatureSpec validation and the bytes a run will need, said before it starts."""

from __future__ import annotations

import pytest

from featup.store.spec import FeatureSpec, estimate_bytes, human_bytes


def test_coco_at_224_with_384_channels_needs_about_4_5_tb():
    spec = FeatureSpec("cocostuff", "dinov2_vits14", "jbu", channels=384, size=224)
    estimate = estimate_bytes(spec, 118_287)
    assert estimate.features == 118_287 * 384 * 224 * 224 * 2
    assert "118,287 samples × 384 ch × 224×224 × float16 (2 B) = 4.56 TB (4.15 TiB)" in str(estimate)


def test_pca_and_lowres_change_the_estimate():
    full = FeatureSpec("d", "b", "u", channels=384, size=(224, 224), lowres_size=(14, 14))
    pca = FeatureSpec("d", "b", "u", channels=384, size=(224, 224), pca_components=64)
    assert estimate_bytes(full, 10).lowres == 10 * 384 * 14 * 14 * 2
    assert estimate_bytes(pca, 10).features == estimate_bytes(full, 10).features * 64 // 384
    assert "64 PCA coefficients (of 384 ch)" in str(estimate_bytes(pca, 10))


def test_spec_round_trips_through_its_dict():
    spec = FeatureSpec("d", "b", "u", channels=8, size=(4, 6), lowres_size=2, normalization={"mean": [0.5]})
    assert spec.size == (4, 6) and spec.lowres_size == (2, 2)
    assert FeatureSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"dataset": "a/b"}, "becomes a folder"),
        ({"dtype": "int8"}, "dtype must be one of"),
        ({"compression": "lzma"}, "compression must be one of"),
        ({"pca_components": 9}, "pca_components must lie in 1..channels=8"),
        ({"size": 0}, "size must be positive"),
        ({"channels_per_chunk": 9}, "channels_per_chunk"),
    ],
)
def test_bad_choices_are_refused(over, message):
    with pytest.raises(ValueError, match=message):
        FeatureSpec(**{"dataset": "d", "backbone": "b", "upsampler": "u", "channels": 8, "size": 4, **over})


def test_human_bytes():
    assert human_bytes(512) == "512 B"
    assert human_bytes(2**30) == "1.07 GB (1 GiB)"
