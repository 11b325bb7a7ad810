"""Evaluation of (upsampled) features: linear probes for segmentation and depth, CAM faithfulness, reports."""

from featup.eval.cam import (
    CamOutcome,
    class_scores,
    evaluate_cams,
    explain,
    normalize_cam,
)
from featup.eval.compare import CompareSettings, Comparison, Example, compare_upsamplers
from featup.eval.depth_probe import evaluate_depth_probe, fit_depth_probe, predict_depth
from featup.eval.metrics import (
    align_scale_shift,
    average_drop,
    average_increase,
    confusion_matrix,
    depth_errors,
    edge_alignment,
    segmentation_scores,
)
from featup.eval.probe import LinearProbe
from featup.eval.report import markdown_table, write_report
from featup.eval.seg_probe import (
    evaluate_seg_probe,
    fit_seg_probe,
    predict_segmentation,
)
from featup.eval.sharpness import (
    contrast_kept,
    edge_concentration,
    image_edges,
    label_boundaries,
    pooled_cosine,
)
from featup.eval.stored import StoredFeatures

__all__ = [
    "CamOutcome",
    "CompareSettings",
    "Comparison",
    "Example",
    "LinearProbe",
    "StoredFeatures",
    "align_scale_shift",
    "average_drop",
    "average_increase",
    "class_scores",
    "compare_upsamplers",
    "confusion_matrix",
    "contrast_kept",
    "depth_errors",
    "edge_alignment",
    "edge_concentration",
    "evaluate_cams",
    "evaluate_depth_probe",
    "evaluate_seg_probe",
    "explain",
    "fit_depth_probe",
    "fit_seg_probe",
    "image_edges",
    "label_boundaries",
    "markdown_table",
    "normalize_cam",
    "pooled_cosine",
    "predict_depth",
    "predict_segmentation",
    "segmentation_scores",
    "write_report",
]
