"""Render a comparison as a markdown report and an HTML page with PNG figures, on any fsspec URL."""

from __future__ import annotations

import html
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import fsspec
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from featup.eval.compare import METRICS, Comparison, Example
from featup.viz import pca_rgb

__all__ = ["markdown_table", "write_report"]

# Metrics in 0..1 shown as percentages, like the paper's table.
_PERCENT = {"seg_miou", "seg_acc", "depth_delta1"}


def _cell(row: Mapping[str, Any], key: str) -> str:
    value = row.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value * 100:.2f}" if key in _PERCENT else f"{value:.3f}" if key == "depth_rmse" else f"{value:.2f}"


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, bool]]:
    return [m for m in METRICS if any(m[0] in row for row in rows)]


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The metric rows as a markdown table (mIoU, accuracy and δ in %; — where a task was not run)."""
    columns = _columns(rows)
    lines = ["| upsampler | " + " | ".join(h for _, h, _ in columns) + " | upsampling s |",
             "|---|" + "---:|" * (len(columns) + 1)]
    for row in rows:
        cells = [_cell(row, key) for key, _, _ in columns]
        lines.append(f"| {row['upsampler']} | " + " | ".join(cells) + f" | {row.get('upsample_s', 0.0):.1f} |")
    return "\n".join(lines) + "\n"


def _html_table(rows: Sequence[Mapping[str, Any]]) -> str:
    columns = _columns(rows)
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h, _ in columns)
    body = "".join(
        f"<tr><td>{html.escape(str(row['upsampler']))}</td>"
        + "".join(f"<td>{_cell(row, key)}</td>" for key, _, _ in columns)
        + f"<td>{row.get('upsample_s', 0.0):.1f}</td></tr>"
        for row in rows
    )
    return f"<table><tr><th>upsampler</th>{head}<th>upsampling s</th></tr>{body}</table>"


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)
    return buffer.getvalue()


def _grid(n_panels: int, titles_height: float = 0.35) -> tuple[Figure, list]:
    figure = Figure(figsize=(2.4 * n_panels, 2.4 + titles_height), layout="constrained")
    axes = figure.subplots(1, n_panels, squeeze=False)[0]
    for ax in axes:
        ax.set_axis_off()
    return figure, list(axes)


def _metrics_chart(rows: Sequence[Mapping[str, Any]]) -> bytes:
    columns = _columns(rows)
    figure = Figure(figsize=(3.2 * max(1, len(columns)), 3.2), layout="constrained")
    axes = figure.subplots(1, max(1, len(columns)), squeeze=False)[0]
    names = [str(r["upsampler"]) for r in rows]
    colours = [f"C{i}" for i in range(len(rows))]
    for ax, (key, header, _) in zip(axes, columns):
        scale = 100 if key in _PERCENT else 1
        values = [row.get(key, float("nan")) * scale for row in rows]
        ax.bar(range(len(rows)), values, color=colours)
        ax.set_xticks(range(len(rows)), names, rotation=45, ha="right", fontsize=8)
        ax.set_title(header + (" (%)" if key in _PERCENT else ""))
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
    axes[0].set_title("image")
    for ax, name, rgb in zip(axes[1:], names, rgbs):
        ax.imshow(rgb.permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(f"{name} {rgb.shape[1]}×{rgb.shape[2]}", fontsize=9)
    return _png(figure)


def _segmentation_figure(example: Example, class_names: Sequence[str] | None) -> bytes:
    import imgviz

    def colour(label: np.ndarray) -> np.ndarray:
        return imgviz.label2rgb(label.astype(np.int32), image=example.image, alpha=0.6)

    figure, axes = _grid(len(example.outputs) + 2)
    axes[0].imshow(example.image)
    axes[0].set_title("image")
    axes[1].imshow(colour(example.target))
    axes[1].set_title("label")
    for ax, (name, pred) in zip(axes[2:], example.outputs.items()):
        ax.imshow(colour(pred))
        ax.set_title(name, fontsize=9)
    if class_names:
        present = sorted({int(v) for v in np.unique(example.target) if v < len(class_names)})
        cmap = imgviz.label_colormap()
        handles = [Patch(color=cmap[c] / 255, label=class_names[c]) for c in present]
        figure.legend(handles=handles, loc="outside lower center", ncol=min(6, len(handles)), fontsize=8)
    return _png(figure)


def _depth_figure(example: Example) -> bytes:
    depth = example.target
    valid = np.isfinite(depth) & (depth > 0)
    low, high = np.percentile(depth[valid], [1, 99])
    figure, axes = _grid(len(example.outputs) + 2)
    axes[0].imshow(example.image)
    axes[0].set_title("image")
    axes[1].imshow(depth, cmap="turbo_r", vmin=low, vmax=high)
    axes[1].set_title("depth")
    for ax, (name, pred) in zip(axes[2:], example.outputs.items()):
        ax.imshow(pred, cmap="turbo_r", vmin=low, vmax=high)
        ax.set_title(f"{name} (aligned)", fontsize=9)
    return _png(figure)


def _cam_figure(example: Example) -> bytes:
    figure, axes = _grid(len(example.outputs) + 1)
    axes[0].imshow(example.image)
    axes[0].set_title(example.caption or "image", fontsize=9)
    for ax, (name, cam) in zip(axes[1:], example.outputs.items()):
        ax.imshow(example.image)
        ax.imshow(cam, cmap="jet", alpha=0.5, vmin=0, vmax=1)
        ax.set_title(name, fontsize=9)
    return _png(figure)


def write_report(
    comparison: Comparison,
    url: str,
    *,
    title: str = "FeatUp evaluation",
    notes: str = "",
    storage_options: Mapping[str, Any] | None = None,
) -> list[str]:
    """Write ``report.md``, ``index.html`` and PNG figures into the folder ``url`` (local path or fsspec URL).

    Figures: a bar chart of the table, PCA images of each upsampler's features (one basis fitted jointly),
    probe predictions against labels and depth, and CAM overlays — each where that task was run.
    Returns the URLs written, page first.
    """
    fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    fs.makedirs(root, exist_ok=True)
    base = url.rstrip("/")
    figures: list[tuple[str, str, bytes]] = [("metrics.png", "Metrics", _metrics_chart(comparison.rows))]
    ex = comparison.examples
    if "features" in ex:
        figures.append(("features.png", "Features (PCA, one basis for all)", _features_figure(ex["features"])))
    if "seg" in ex:
        figures.append(("segmentation.png", "Segmentation probe", _segmentation_figure(ex["seg"], comparison.class_names)))
    if "depth" in ex:
        figures.append(("depth.png", "Depth probe", _depth_figure(ex["depth"])))
    if "cam" in ex:
        figures.append(("cam.png", "Class activation maps", _cam_figure(ex["cam"])))

    settings = comparison.settings
    dense_size = settings.output_size or settings.image_size
    setup = (f"images {settings.image_size} px, upsampled features {dense_size} px "
             f"(CAMs {settings.cam_output_size or dense_size} px), "
             f"probe protocol '{settings.probe_protocol}', labels reduced by '{settings.label_reduce}', "
             f"low-res outputs resized by '{settings.resize_mode}', seed {settings.seed}; images: "
             + ", ".join(f"{k} {v}" for k, v in comparison.counts.items()))
    markdown = [f"# {title}", ""] + ([notes, ""] if notes else []) + [setup, "", markdown_table(comparison.rows)]
    markdown += [f"## {caption}\n\n![{caption}]({name})\n" for name, caption, _ in figures]
    page = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:.2em .6em;text-align:right}"
        "img{max-width:100%}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>" + (f"<p>{html.escape(notes)}</p>" if notes else "")
        + f"<p>{html.escape(setup)}</p>{_html_table(comparison.rows)}"
        + "".join(f"<h2>{html.escape(c)}</h2><img src='{n}' alt='{html.escape(c)}'>" for n, c, _ in figures)
        + "</body></html>"
    )
    written = []
    for name, data in [("index.html", page.encode()),
                       ("report.md", "\n".join(markdown).encode())]:
        fs.pipe_file(f"{root}/{name}", data)
        written.append(f"{base}/{name}")
    for name, _, data in figures:
        fs.pipe_file(f"{root}/{name}", data)
        written.append(f"{base}/{name}")
    return written
