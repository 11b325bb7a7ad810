"""The segmentation probe on features with known answers: perfect, constant, low-res, transfer."""

import pytest
import torch
import torch.nn.functional as F

from featup.eval.seg_probe import (
    evaluate_seg_probe,
    fit_seg_probe,
    predict_segmentation,
    reduce_labels,
)


def blocky_labels(n: int, classes: int, cells: int = 6, cell: int = 8, seed: int = 0) -> list[torch.Tensor]:
    """Label maps constant on cell×cell blocks, so a cells×cells feature grid can represent them exactly."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, classes, (cells, cells), generator=g).repeat_interleave(cell, 0).repeat_interleave(cell, 1)
            for _ in range(n)]


def one_hot(label: torch.Tensor, classes: int) -> torch.Tensor:
    return F.one_hot(label.long(), classes).permute(2, 0, 1).float()


def test_one_hot_features_give_miou_1():
    labels = blocky_labels(4, 5)
    pairs = [(one_hot(label, 5), label) for label in labels]
    probe = fit_seg_probe(pairs, 5, pixels_per_image=300, steps=100)
    assert evaluate_seg_probe(probe, pairs) == {"miou": 1.0, "accuracy": 1.0}


def test_low_res_one_hot_features_are_scored_at_full_resolution():
    labels = blocky_labels(4, 5)
    pairs = [(one_hot(label[::8, ::8], 5) + 0.05 * torch.randn(5, 6, 6, generator=torch.Generator().manual_seed(i)),
              label) for i, label in enumerate(labels)]
    probe = fit_seg_probe(pairs, 5, steps=100)
    assert evaluate_seg_probe(probe, pairs, resize_mode="nearest") == {"miou": 1.0, "accuracy": 1.0}
    assert predict_segmentation(probe, pairs[0][0], (48, 48)).shape == (48, 48)


def test_constant_features_predict_the_majority_class():
    labels = blocky_labels(4, 5, seed=1)
    pairs = [(torch.ones(3, 48, 48), label) for label in labels]
    counts = torch.bincount(torch.cat([label.flatten() for label in labels]), minlength=5).double()
    majority = counts.max() / counts.sum()
    present = int((counts > 0).sum())
    scores = evaluate_seg_probe(fit_seg_probe(pairs, 5, steps=100), pairs)
    assert scores["accuracy"] == pytest.approx(float(majority))
    assert scores["miou"] == pytest.approx(float(majority / present))


def test_ignored_pixels_neither_train_nor_score():
    labels = blocky_labels(2, 3)
    # Features that say "class 0" where the label is ignored must not hurt the score.
    pairs = []
    for label in labels:
        masked = label.clone()
        masked[:8] = 255
        feats = one_hot(label, 3)
        feats[:, :8] = one_hot(torch.zeros_like(label[:8]), 3)
        pairs.append((feats, masked))
    probe = fit_seg_probe(pairs, 3, pixels_per_image=300, steps=100)
    assert evaluate_seg_probe(probe, pairs)["miou"] == 1.0


def test_training_is_seeded():
    labels = blocky_labels(2, 4)
    g = torch.Generator().manual_seed(3)
    pairs = [(torch.randn(8, 48, 48, generator=g), label) for label in labels]
    a = fit_seg_probe(pairs, 4, pixels_per_image=100, steps=20, seed=5)
    b = fit_seg_probe(pairs, 4, pixels_per_image=100, steps=20, seed=5)
    c = fit_seg_probe(pairs, 4, pixels_per_image=100, steps=20, seed=6)
    assert torch.equal(a.conv.weight, b.conv.weight)
    assert not torch.equal(a.conv.weight, c.conv.weight)


def test_reduce_labels_majority_nearest_and_ignore():
    label = torch.tensor([
        [1, 1, 255, 255],
        [1, 2, 255, 255],
        [2, 0, 3, 3],
        [0, 0, 3, 2],
    ])
    assert reduce_labels(label, (2, 2), 4).tolist() == [[1, 255], [0, 3]]
    # The published protocol: nearest, i.e. the top-left pixel of each 2×2 cell.
    assert reduce_labels(label, (2, 2), 4, "nearest").tolist() == [[1, 255], [2, 3]]


def test_bad_inputs_raise_with_a_fix():
    with pytest.raises(ValueError, match="num_classes"):
        reduce_labels(torch.full((4, 4), 9), (2, 2), 4)
    with pytest.raises(ValueError, match="at least one image"):
        fit_seg_probe([(torch.ones(2, 4, 4), torch.full((4, 4), 255))], 3)
    probe = fit_seg_probe([(torch.ones(2, 4, 4), torch.zeros(4, 4, dtype=torch.long))], 3, steps=1)
    with pytest.raises(ValueError, match="backbone it was trained on"):
        predict_segmentation(probe, torch.ones(5, 4, 4), (4, 4))
