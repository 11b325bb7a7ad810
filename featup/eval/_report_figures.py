"""The report's figures as PNG bytes (metrics chart, PCA features, probe predictions, CAMs) and their captions."""

from __future__ import annotations

import io
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from featup.eval._report_table import _cell, _columns, _shown
from featup.eval.compare import Comparison, Example
from featup.eval.metrics import IGNORE_INDEX
from featup.viz import pca_rgb

_NAMELESS_CAM_CAPTION = re.compile(r"^class \((\d+)\)")


def _cam_caption(caption: str, class_names: Sequence[str] | None) -> str:
    """The CAM image's caption with the class named ("Egyptian cat (285), p = 0.87"), ImageNet names by default."""
    match = _NAMELESS_CAM_CAPTION.match(caption)
    if not match:
        return caption
    index = int(match.group(1))
    if class_names is None:
        from featup.eval.imagenet_classes import imagenet_class_names

        class_names = imagenet_class_names()
    if index >= len(class_names):
        return caption
    return f"{class_names[index]} ({index})" + caption[match.end():]


_FIGURE_NOTES = {
    "metrics.png": "The table as bars, one panel per metric, the arrow giving the better direction. Each panel's "
                   "axis is zoomed on the differences and need not start at 0.",
    "features.png": "The first {task} test image and each upsampler's features on it, reduced to three colours by PCA: "
                    "one basis is fitted on all panels together, so the same colour means the same feature "
                    "everywhere. Good upsampling keeps the lowres panel's colours and sharpens their edges along the "
                    "image's.",
    "segmentation.png": "The first segmentation test image, its true labels and each upsampler's probe prediction, "
                        "coloured by class (legend: every class in the labels or any prediction{classes}).",
    "depth.png": "The first depth test image, its true depth and each upsampler's probe prediction after the "
                 "scale-and-shift fit used for scoring, all on the same colour scale (red near, blue far).",
    "cam.png": "The first CAM image, titled with the class the classifier predicts (its guess, right or wrong) "
               "and that class's probability p ({caption}), and "
               "the class activation map from each upsampler's features over it (red: strongest evidence for "
               "that class, blue: none). Faithful maps cover the object.",
}


def _figure_note(name: str, comparison: Comparison, cam_class_names: Sequence[str] | None) -> str:
    """The caption under a figure, naming the CAM's class and the segmentation legend's classes."""
    note = _FIGURE_NOTES.get(name, "")
    if name == "cam.png" and "cam" in comparison.examples:
        return note.format(caption=_cam_caption(comparison.examples["cam"].caption, cam_class_names) or "")
    if name == "features.png":
        return note.format(task="segmentation" if "seg" in comparison.examples else "depth")
    if name == "segmentation.png" and "seg" in comparison.examples:
        names = [_class_label(c, comparison.class_names) for c in legend_classes(comparison.examples["seg"])]
        return note.format(classes=": " + ", ".join(names) if names else "")
    return note


def _class_label(c: int, class_names: Sequence[str] | None) -> str:
    if c == IGNORE_INDEX:
        return "unlabelled (not scored)"
    return f"{class_names[c]} ({c})" if class_names and 0 <= c < len(class_names) else f"class {c}"


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    FigureCanvasAgg(figure)
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight", pad_inches=0.05)
    return buffer.getvalue()


def _grid(n_panels: int, titles_height: float = 0.35) -> tuple[Figure, list]:
    figure = Figure(figsize=(2.4 * n_panels, 2.4 + titles_height), layout="constrained")
    axes = figure.subplots(1, n_panels, squeeze=False)[0]
    for ax in axes:
        ax.set_axis_off()
    return figure, list(axes)


def _metrics_chart(rows: Sequence[Mapping[str, Any]]) -> bytes:
    columns = _columns(rows)
    across = max(1, min(3, len(columns)))  # two rows of three for the full table: legible at page width
    down = max(1, math.ceil(len(columns) / across))
    figure = Figure(figsize=(3.0 * across, 2.7 * down), layout="constrained")
    axes = list(figure.subplots(down, across, squeeze=False).flat)
    for ax in axes[len(columns):]:
        ax.set_axis_off()
    names = [str(r["upsampler"]) for r in rows]
    colours = [f"C{i}" for i in range(len(rows))]
    for ax, (key, header, _) in zip(axes, columns):
        values = [v if (v := _shown(row, key)) is not None else float("nan") for row in rows]
        bars = ax.bar(range(len(rows)), values, color=colours)
        ax.bar_label(bars, labels=[_cell(row, key) if _shown(row, key) is not None else "" for row in rows],
                     fontsize=8, padding=1)
        ax.set_xticks(range(len(rows)), names, rotation=30, ha="right", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
        ax.set_title(header, fontsize=10)
        finite = [v for v in values if math.isfinite(v)]
        if finite:  # zoom on the differences, which are small next to the values
            low, high = min(finite), max(finite)
            pad = max((high - low) * 0.3, abs(high) * 0.02, 1e-3)
            ax.set_ylim(max(0.0, low - pad) if low >= 0 else low - pad, high + pad)
    return _png(figure)


def _features_figure(example: Example) -> bytes:
    names = list(example.outputs)
    rgbs = pca_rgb([torch.from_numpy(example.outputs[n]) for n in names])
    figure, axes = _grid(len(names) + 1)
    axes[0].imshow(example.image)
    axes[0].set_title("image", fontsize=9)
    for ax, name, rgb in zip(axes[1:], names, rgbs):
        ax.imshow(rgb.permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(f"{name} {rgb.shape[1]}×{rgb.shape[2]}", fontsize=9)
    return _png(figure)


def legend_classes(example: Example) -> list[int]:
    """Label values a segmentation figure's legend lists: every value in the target or in any prediction."""
    values = set(np.unique(example.target).tolist()) if example.target is not None else set()
    for pred in example.outputs.values():
        values |= set(np.unique(pred).tolist())
    return sorted(int(v) for v in values)


def _segmentation_figure(example: Example, class_names: Sequence[str] | None) -> bytes:
    import imgviz

    def colour(label: np.ndarray) -> np.ndarray:
        return imgviz.label2rgb(label.astype(np.int32), image=example.image, alpha=0.6)

    figure, axes = _grid(len(example.outputs) + 2)
    axes[0].imshow(example.image)
    axes[0].set_title("image", fontsize=9)
    axes[1].imshow(colour(example.target))
    axes[1].set_title("true labels", fontsize=9)
    for ax, (name, pred) in zip(axes[2:], example.outputs.items()):
        ax.imshow(colour(pred))
        ax.set_title(f"{name} probe", fontsize=9)
    cmap = imgviz.label_colormap()
    handles = [Patch(color=cmap[c % len(cmap)] / 255, label=_class_label(c, class_names))
               for c in legend_classes(example)]
    if handles:
        figure.legend(handles=handles, loc="outside lower center", ncol=min(6, len(handles)), fontsize=8,
                      frameon=False)
    return _png(figure)


def _depth_figure(example: Example) -> bytes:
    depth = example.target
    valid = np.isfinite(depth) & (depth > 0)
    low, high = np.percentile(depth[valid], [1, 99])
    figure, axes = _grid(len(example.outputs) + 2)
    axes[0].imshow(example.image)
    axes[0].set_title("image", fontsize=9)
    shown = axes[1].imshow(depth, cmap="turbo_r", vmin=low, vmax=high)
    axes[1].set_title("true depth", fontsize=9)
    for ax, (name, pred) in zip(axes[2:], example.outputs.items()):
        ax.imshow(pred, cmap="turbo_r", vmin=low, vmax=high)
        ax.set_title(f"{name} probe", fontsize=9)
    figure.colorbar(shown, ax=axes, shrink=0.8, pad=0.01, label="depth")
    return _png(figure)


def _cam_figure(example: Example, class_names: Sequence[str] | None) -> bytes:
    figure, axes = _grid(len(example.outputs) + 1)
    axes[0].imshow(example.image)
    axes[0].set_title(_cam_caption(example.caption, class_names) or "image", fontsize=9)
    for ax, (name, cam) in zip(axes[1:], example.outputs.items()):
        ax.imshow(example.image)
        ax.imshow(cam, cmap="jet", alpha=0.5, vmin=0, vmax=1)
        ax.set_title(f"{name} CAM", fontsize=9)
    return _png(figure)


# (file name, heading, the example it shows or None for the chart), in report order.
_FIGURES = (
    ("metrics.png", "Metrics", None),
    ("features.png", "Features (PCA, one basis for all)", "features"),
    ("segmentation.png", "Segmentation probe", "seg"),
    ("depth.png", "Depth probe", "depth"),
    ("cam.png", "Class activation maps", "cam"),
)


def report_figures(comparison: Comparison) -> list[tuple[str, str]]:
    """(file name, heading) of each figure `write_report` draws for this comparison, in report order."""
    return [(name, heading) for name, heading, task in _FIGURES if task is None or task in comparison.examples]


def _draw(name: str, comparison: Comparison, cam_class_names: Sequence[str] | None) -> bytes:
    ex = comparison.examples
    if name == "metrics.png":
        return _metrics_chart(comparison.rows)
    if name == "features.png":
        return _features_figure(ex["features"])
    if name == "segmentation.png":
        return _segmentation_figure(ex["seg"], comparison.class_names)
    if name == "depth.png":
        return _depth_figure(ex["depth"])
    return _cam_figure(ex["cam"], cam_class_names)
