"""ADE20K scene parsing layout: 150 classes, 0 → ignore, split names."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from featup.data.layouts import ingest
from featup.data.layouts.ade20k import CLASSES
from featup.data.reading import open_shards


@pytest.fixture
def ade_root(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    rng = np.random.default_rng(0)
    raw = np.zeros((20, 30), np.uint8)
    raw[:5] = 1  # wall
    raw[5:10] = 150  # flag
    raw[10:15] = 3  # sky
    for split, stems in (
        ("training", ["ADE_train_00000001", "ADE_train_00000002"]),
        ("validation", ["ADE_val_00000001"]),
    ):
        (root / "images" / split).mkdir(parents=True)
        (root / "annotations" / split).mkdir(parents=True)
        for stem in stems:
            Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(
                root / "images" / split / f"{stem}.jpg"
            )
            Image.fromarray(raw).save(root / "annotations" / split / f"{stem}.png")
    (root / "annotations" / "training" / "ADE_train_00000002.png").unlink()
    return root, raw


def test_ade_labels_shift_down_with_zero_ignored(ade_root, tmp_path):
    root, raw = ade_root
    manifest = ingest("ade20k", str(root), str(tmp_path / "out"), split="train", progress=False)
    assert manifest.classes == list(CLASSES) and len(CLASSES) == 150
    assert manifest.classes[0] == "wall" and manifest.classes[149] == "flag" and manifest.classes[7] == "bed"
    assert [k for s in manifest.shards for k in s.keys] == ["ADE_train_00000001"]
    assert manifest.bad[0].key == "ADE_train_00000002" and "no label map" in manifest.bad[0].reason
    label = next(iter(open_shards(str(tmp_path / "out"), size=None)))["label"].numpy()
    np.testing.assert_array_equal(label, np.where(raw == 0, 255, raw.astype(np.int64) - 1))
    assert manifest.meta["split"] == "training"


def test_validation_split_and_unknown_split(ade_root, tmp_path):
    root, _ = ade_root
    manifest = ingest("ade20k", str(root), str(tmp_path / "val"), split="validation", progress=False)
    assert manifest.num_samples == 1
    with pytest.raises(ValueError, match="split must be one of"):
        ingest("ade20k", str(root), str(tmp_path / "x"), split="test", progress=False)
