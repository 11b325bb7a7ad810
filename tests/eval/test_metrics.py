"""Known-answer checks of the segmentation, depth and CAM-faithfulness formulas."""

import pytest
import torch

from featup.eval.metrics import (
    align_scale_shift,
    average_drop,
    average_increase,
    confusion_matrix,
    depth_errors,
    edge_alignment,
    segmentation_scores,
)


def test_confusion_matrix_counts_and_skips_ignored_pixels():
    target = torch.tensor([[0, 0, 1], [1, 2, 255]])
    pred = torch.tensor([[0, 1, 1], [1, 0, 2]])
    confusion = confusion_matrix(pred, target, 3)
    assert confusion.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]


def test_segmentation_scores_by_hand():
    # IoU: class 0 = 1/(2+2-1) = 1/3, class 1 = 2/3, class 2 = 0/1; accuracy 3/5.
    scores = segmentation_scores(torch.tensor([[1, 1, 0], [0, 2, 0], [1, 0, 0]]))
    assert scores["miou"] == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    assert scores["accuracy"] == pytest.approx(3 / 5)


def test_segmentation_scores_skip_classes_absent_from_labels_and_predictions():
    confusion = torch.zeros(5, 5, dtype=torch.long)
    confusion[1, 1] = 10
    assert segmentation_scores(confusion) == {"miou": 1.0, "accuracy": 1.0}


def test_confusion_matrix_rejects_mismatched_shapes_and_bad_labels():
    with pytest.raises(ValueError, match="resize the prediction"):
        confusion_matrix(torch.zeros(4, 4), torch.zeros(8, 8), 2)
    with pytest.raises(ValueError, match="num_classes"):
        confusion_matrix(torch.zeros(2, 2), torch.full((2, 2), 7), 3)


def test_all_ignored_labels_raise():
    with pytest.raises(ValueError, match="ignore label"):
        segmentation_scores(confusion_matrix(torch.zeros(2, 2), torch.full((2, 2), 255), 3))


def test_align_scale_shift_recovers_an_affine_map_per_image():
    g = torch.Generator().manual_seed(0)
    target = torch.rand(2, 5, 7, generator=g) + 1
    pred = torch.stack([-3 * target[0] + 2, 0.5 * target[1] - 1])
    torch.testing.assert_close(align_scale_shift(pred, target), target, rtol=1e-4, atol=1e-4)


def test_align_scale_shift_of_a_constant_is_the_target_mean():
    target = torch.tensor([[1.0, 2.0, 3.0, 6.0]])
    assert align_scale_shift(torch.ones(1, 4), target).tolist() == [[3.0] * 4]


def test_depth_errors_zero_after_alignment_and_std_for_a_constant():
    depth = torch.linspace(1, 10, 64).reshape(1, 8, 8)
    rmse, delta = depth_errors(2 * depth + 5, depth)
    assert rmse.item() == pytest.approx(0, abs=1e-4) and delta.item() == 1.0
    rmse, _ = depth_errors(torch.zeros_like(depth), depth)
    assert rmse.item() == pytest.approx(depth.std(unbiased=False).item(), rel=1e-5)


def test_depth_errors_ignore_invalid_ground_truth():
    depth = torch.linspace(1, 10, 16).reshape(1, 4, 4)
    broken = depth.clone()
    broken[0, 0, :2] = torch.tensor([float("nan"), 0.0])
    pred = depth.clone()
    pred[0, 0, :2] = 1000  # wrong only where the ground truth is missing
    rmse, delta = depth_errors(pred, broken)
    assert rmse.item() == pytest.approx(0, abs=1e-4) and delta.item() == 1.0
    with pytest.raises(ValueError, match="no valid depth"):
        depth_errors(pred, torch.zeros_like(depth))


def test_delta_counts_ratios_below_1_25():
    depth = torch.ones(1, 1, 4)
    _, delta = depth_errors(torch.tensor([[[1.0, 1.0, 1.0, 2.0]]]), depth)
    # The best scale and shift onto a constant is the constant itself: every ratio is 1.
    assert delta.item() == 1.0
    depth = torch.tensor([[[1.0, 2.0, 3.0, 4.0]]])
    _, delta = depth_errors(torch.tensor([[[1.0, 2.0, 3.0, 8.0]]]), depth)
    aligned = align_scale_shift(torch.tensor([[[1.0, 2.0, 3.0, 8.0]]]), depth)
    ratio = torch.maximum(aligned / depth, depth / aligned)
    assert delta.item() == pytest.approx(float((ratio < 1.25).float().mean()))
    assert 0 < delta.item() < 1


def test_average_drop_and_increase_by_hand():
    y = torch.tensor([0.5, 0.8, 0.4, 0.2])
    o = torch.tensor([0.25, 0.9, 0.0, 0.2])
    assert average_drop(y, o) == pytest.approx((0.5 + 0 + 1 + 0) / 4 * 100)
    assert average_increase(y, o) == pytest.approx(25.0)
    assert average_drop(y, y) == 0.0 and average_increase(y, y) == 0.0


def test_edge_alignment_is_one_for_the_image_itself_and_low_for_a_blurred_grid():
    torch.manual_seed(0)
    image = torch.zeros(1, 3, 32, 32)
    image[..., 8:24, 10:20] = torch.tensor([0.9, 0.2, 0.4])[:, None, None]  # a box with sharp edges
    assert edge_alignment(image * 3 + 1, image) == pytest.approx(1.0, abs=1e-5)  # scale and offset do not matter
    coarse = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(image, 8), size=(32, 32),
                                             mode="bilinear", align_corners=False)
    assert edge_alignment(coarse, image) < 0.5
    assert edge_alignment(torch.randn(1, 4, 32, 32), image) == pytest.approx(0.0, abs=0.15)


def test_edge_alignment_needs_features_at_the_image_size():
    with pytest.raises(ValueError, match="upsample the features"):
        edge_alignment(torch.zeros(1, 4, 8, 8), torch.zeros(1, 3, 32, 32))
