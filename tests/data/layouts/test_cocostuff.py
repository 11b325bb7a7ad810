"""COCO-Stuff layout: fine → 27 coarse classes (STEGO's cocostuff27), image lists, missing labels."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from featup.data.layouts import ingest
from featup.data.layouts.cocostuff import COARSE_CLASSES, FINE_CLASSES, FINE_TO_COARSE
from featup.data.reading import open_shards


def png(arr):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def coco_root(tmp_path):
    """cocostuff/{images,annotations,curated}/val2017 with three images, one without a label map."""
    root = tmp_path / "cocostuff"
    for sub in ("images", "annotations", "curated"):
        (root / sub / "val2017").mkdir(parents=True)
    rng = np.random.default_rng(0)
    fine = np.zeros((24, 32), np.uint8)  # person
    fine[:8] = 156  # sky-other
    fine[8:12] = 181  # wood
    fine[12:14] = 255  # unlabeled
    fine[14:16] = 200  # not a COCO-Stuff class
    for stem in ("000000000139", "000000000285", "000000000632"):
        Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(
            root / "images" / "val2017" / f"{stem}.jpg"
        )
    for stem in ("000000000139", "000000000285"):
        (root / "annotations" / "val2017" / f"{stem}.png").write_bytes(png(fine))
    (root / "curated" / "val2017" / "Coco164kFull_Stuff_Coarse.txt").write_text("000000000285\n000000000139\n")
    return root, fine


def test_coarse_labels_follow_the_27_class_mapping(coco_root, tmp_path):
    root, _ = coco_root
    manifest = ingest("cocostuff", str(root), str(tmp_path / "out"), split="val2017", progress=False)
    assert manifest.classes == list(COARSE_CLASSES) and len(manifest.classes) == 27
    assert [k for s in manifest.shards for k in s.keys] == ["000000000139", "000000000285"]
    assert [(b.key, b.reason) for b in manifest.bad] == [
        ("000000000632", "no label map annotations/val2017/000000000632.png")
    ]
    sample = next(iter(open_shards(str(tmp_path / "out"), size=None)))
    label = sample["label"].numpy()
    c = COARSE_CLASSES.index
    assert (label[:8] == c("sky-stuff")).all()
    assert (label[8:12] == c("solid-stuff")).all()
    assert (label[12:16] == 255).all()  # unlabeled and unknown values are ignored
    assert (label[16:] == c("person-things")).all()
    assert sample["meta"] == {"split": "val2017", "file": "images/val2017/000000000139.jpg", "image_id": 139}


def test_fine_labels_keep_the_182_classes(coco_root, tmp_path):
    root, fine = coco_root
    manifest = ingest("cocostuff", str(root), str(tmp_path / "out"), split="val2017", coarse=False, progress=False)
    assert len(manifest.classes) == 182 and manifest.classes[156] == "sky-other"
    label = next(iter(open_shards(str(tmp_path / "out"), size=None)))["label"].numpy()
    np.testing.assert_array_equal(label, np.where(fine > 181, 255, fine))


def test_curated_image_list_picks_and_orders_images(coco_root, tmp_path):
    root, _ = coco_root
    manifest = ingest(
        "cocostuff",
        str(root),
        str(tmp_path / "out"),
        split="val2017",
        image_list="Coco164kFull_Stuff_Coarse.txt",
        progress=False,
    )
    assert [k for s in manifest.shards for k in s.keys] == ["000000000285", "000000000139"]
    assert manifest.bad == []


def test_mapping_table_groups_fine_classes_sensibly():
    assert len(FINE_CLASSES) == len(FINE_TO_COARSE) == 182
    coarse = {name: COARSE_CLASSES[FINE_TO_COARSE[i]] for i, name in enumerate(FINE_CLASSES)}
    assert all(coarse[n] == "wall-stuff" for n in FINE_CLASSES if n.startswith("wall-"))
    assert all(coarse[n] == "floor-stuff" for n in FINE_CLASSES if n.startswith("floor-"))
    expected = {
        "person": "person-things", "bicycle": "vehicle-things", "cat": "animal-things", "pizza": "food-things",
        "tv": "electronic-things", "microwave": "appliance-things", "chair": "furniture-things",
        "frisbee": "sports-things", "backpack": "accessory-things", "book": "indoor-things",
        "bottle": "kitchen-things", "traffic light": "outdoor-things", "sky-other": "sky-stuff",
        "clouds": "sky-stuff", "tree": "plant-stuff", "grass": "plant-stuff", "sea": "water-stuff",
        "road": "ground-stuff", "building-other": "building-stuff", "ceiling-tile": "ceiling-stuff",
        "window-blind": "window-stuff", "rug": "textile-stuff", "cardboard": "rawmaterial-stuff",
        "fence": "structural-stuff", "stone": "solid-stuff", "fruit": "food-stuff", "cabinet": "furniture-stuff",
    }  # fmt: skip
    assert {n: coarse[n] for n in expected} == expected
    assert set(FINE_TO_COARSE) == set(range(27))
