"""Render a comparison as a markdown report and an HTML page with PNG figures, on any fsspec URL.

The report explains itself: every metric is defined with its unit and direction, the best upsampler of
each column is named, sample sizes are turned into what they mean for noise, and the settings are said
in plain words. Metrics have one scale everywhere (the table, the chart, `table_records`): A.D., A.I.,
mIoU, accuracy and δ<1.25 in percent, RMSE in the depth maps' units, time in seconds.
"""

from __future__ import annotations

import base64
import html
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

from featup.eval.compare import METRICS, Comparison, Example
from featup.eval.metrics import IGNORE_INDEX
from featup.io import join_url, write_bytes
from featup.viz import pca_rgb

__all__ = [
    "legend_classes",
    "markdown_table",
    "report_figures",
    "report_markdown",
    "table_records",
    "winner_sentences",
    "write_report",
]

# Metrics the comparison stores as 0..1 fractions and every view shows as percentages, like the paper.
_PERCENT = {"seg_miou", "seg_acc", "depth_delta1"}
# Column headers with their unit; the arrow says which way is better.
_HEADERS = {
    "cam_ad": "A.D. % ↓",
    "cam_ai": "A.I. % ↑",
    "seg_miou": "mIoU % ↑",
    "seg_acc": "Acc. % ↑",
    "depth_rmse": "RMSE ↓",
    "depth_delta1": "δ<1.25 % ↑",
}
_SHORT = {key: header.split(" ")[0] for key, header, _ in METRICS}
_TIME_HEADERS = ("upsampling s, total", "s / image")
_DEFINITIONS = {
    "cam_ad": "**A.D.** (Average Drop, %, lower is better): how much the classifier's probability for its "
              "predicted class falls when the image is multiplied by the class activation map (CAM) computed "
              "from that upsampler's features — the mean over images of max(0, Y − O) / Y × 100, with Y the "
              "probability on the image and O on the CAM-masked image; a CAM that keeps the evidence the "
              "classifier uses loses little.",
    "cam_ai": "**A.I.** (Average Increase, %, higher is better): the share of images whose class probability "
              "goes up when only the CAM-highlighted part of the image is kept (O > Y).",
    "seg_miou": "**mIoU** (mean intersection over union, %, higher is better): for each class, the pixels "
                "both predicted and labelled as that class divided by the pixels either predicted or labelled "
                "as it, pooled over the test images, then averaged over the classes that occur in labels or "
                "predictions.",
    "seg_acc": "**Acc.** (pixel accuracy, %, higher is better): the share of labelled test pixels given the "
               "right class (unlabelled pixels are not scored).",
    "depth_rmse": "**RMSE** (root-mean-square depth error, in the depth maps' units — metres for metric depth; "
                  "lower is better): per test image the probe's output is first fitted to the true depth by the "
                  "least-squares scale and shift (a linear probe cannot know absolute distance), then the root "
                  "of the mean squared error over valid pixels; averaged over images.",
    "depth_delta1": "**δ<1.25** (%, higher is better): after the same fit, the share of valid pixels whose "
                    "predicted depth is within a factor 1.25 of the true depth, averaged over images.",
}
_PROTOCOLS = {
    "own": "each upsampler gets its own linear probe (one weight per feature channel and class, applied at "
           "every pixel) trained on its own features of the training images, with the labels shrunk to the "
           "feature grid; it tests how much each upsampler's features can tell.",
    "lowres": "one linear probe is trained on the lowres features (the backbone's own) and applied unchanged to every "
              "upsampler's features; it tests whether upsampled features are a drop-in replacement that "
              "keeps their meaning (training images are not upsampled, so the time covers test images only).",
    "full": "each upsampler gets its own linear probe, trained on its features resized to the labels' full "
            "resolution.",
}
_LABEL_REDUCE = {
    "majority": "the most frequent labelled class of each feature cell",
    "nearest": "the label at each feature cell's centre",
}
_RESIZE = {
    "nearest": "nearest-neighbour (blocky) interpolation",
    "bilinear": "bilinear (smooth) interpolation",
}
_NAMELESS_CAM_CAPTION = re.compile(r"^class \((\d+)\)")


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _shown(row: Mapping[str, Any], key: str) -> float | None:
    """The value of ``key`` on the report's scale (percent for fractions), or None where it was not run."""
    value = row.get(key)
    if _missing(value):
        return None
    return float(value) * 100 if key in _PERCENT else float(value)


def _digits(key: str) -> int:
    return 3 if key == "depth_rmse" else 2


def _cell(row: Mapping[str, Any], key: str) -> str:
    value = _shown(row, key)
    return "—" if value is None else f"{value:.{_digits(key)}f}"


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, bool]]:
    return [(key, _HEADERS.get(key, header), higher) for key, header, higher in METRICS
            if any(key in row for row in rows)]


def _is_baseline(name: str) -> bool:
    return name in ("lowres", "low-res")


def _baseline(rows: Sequence[Mapping[str, Any]]) -> str | None:
    """The name of the row that scores the backbone's own low-res features, if there is one."""
    return next((str(r["upsampler"]) for r in rows if _is_baseline(str(r["upsampler"]))), None)


def _images_upsampled(row: Mapping[str, Any], counts: Mapping[str, int], protocol: str) -> int:
    """How many images this row's upsampler upsampled: train images (unless one probe serves all) and test images."""
    n = 0
    for task, key in (("seg", "seg_miou"), ("depth", "depth_rmse")):
        if not _missing(row.get(key)):
            n += counts.get(f"{task}_test", 0) + (counts.get(f"{task}_train", 0) if protocol != "lowres" else 0)
    if not _missing(row.get("cam_ad")):
        n += counts.get("cam", 0)
    return n


def _time_cells(row: Mapping[str, Any], counts: Mapping[str, int] | None, protocol: str) -> list[str]:
    seconds = float(row.get("upsample_s", 0.0) or 0.0)
    cells = [f"{seconds:.1f}"]
    if counts is not None:
        n = _images_upsampled(row, counts, protocol)
        cells.append("—" if _is_baseline(str(row["upsampler"])) or not n else f"{seconds / n:.3f}")
    return cells


def markdown_table(rows: Sequence[Mapping[str, Any]], counts: Mapping[str, int] | None = None,
                   probe_protocol: str = "own") -> str:
    """The metric rows as a markdown table, units in the headers (— where a task was not run).

    With ``counts`` (a comparison's image counts) a column gives the upsampling time per image.
    """
    columns = _columns(rows)
    times = _TIME_HEADERS if counts is not None else _TIME_HEADERS[:1]
    lines = ["| upsampler | " + " | ".join([h for _, h, _ in columns] + list(times)) + " |",
             "|---|" + "---:|" * (len(columns) + len(times))]
    for row in rows:
        cells = [_cell(row, key) for key, _, _ in columns] + _time_cells(row, counts, probe_protocol)
        lines.append(f"| {row['upsampler']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def table_records(rows: Sequence[Mapping[str, Any]], counts: Mapping[str, int] | None = None,
                  probe_protocol: str = "own") -> list[dict[str, Any]]:
    """The table as records keyed by its headers, on the report's scale and rounding (e.g. for a table artifact)."""
    columns = _columns(rows)
    records = []
    for row in rows:
        record: dict[str, Any] = {"upsampler": str(row["upsampler"])}
        for key, header, _ in columns:
            value = _shown(row, key)
            record[header] = None if value is None else round(value, _digits(key))
        cells = _time_cells(row, counts, probe_protocol)
        for header, cell in zip(_TIME_HEADERS, cells):
            record[header] = None if cell == "—" else float(cell)
        records.append(record)
    return records


def _best(rows: Sequence[Mapping[str, Any]], key: str, higher: bool) -> tuple[list[str], list[tuple[str, float]]]:
    """(names tied for best at the shown precision, every scored (name, value) best first)."""
    scored = [(str(r["upsampler"]), round(v, _digits(key))) for r in rows if (v := _shown(r, key)) is not None]
    scored.sort(key=lambda item: -item[1] if higher else item[1])
    if not scored:
        return [], []
    return [name for name, value in scored if value == scored[0][1]], scored


def _join(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _value(key: str, value: float, counts: Mapping[str, int] | None) -> str:
    text = f"{value:.{_digits(key)}f}" + (" %" if key != "depth_rmse" else "")
    n = (counts or {}).get("cam", 0)
    if key == "cam_ai" and n and abs(value * n / 100 - round(value * n / 100)) < 0.01:
        text += f" ({round(value * n / 100)} of {n} images)"  # A.I. is a share of the CAM images
    return text


def winner_sentences(rows: Sequence[Mapping[str, Any]], counts: Mapping[str, int] | None = None) -> list[str]:
    """One sentence per metric column naming the best upsampler (or the tie) and the runner-up's value."""
    sentences = []
    for key, _, higher in _columns(rows):
        best, scored = _best(rows, key, higher)
        if len(scored) < 2:
            continue
        short = _SHORT[key]
        word = "highest" if higher else "lowest"
        if len(best) == len(scored):
            sentences.append(f"{short}: all tie at {_value(key, scored[0][1], counts)}.")
            continue
        top = _value(key, scored[0][1], counts)
        runner_name, runner_value = scored[len(best)]
        if len(best) > 1:
            sentence = f"{short}: {_join(best)} tie for the {word} value, {top}; next is {runner_name} at "
        else:
            sentence = f"{short}: {best[0]} is best ({word}) at {top}, ahead of {runner_name} at "
        sentence += _value(key, runner_value, counts)
        n = (counts or {}).get("cam", 0)
        if key == "cam_ai" and n and round(abs(scored[0][1] - runner_value) * n / 100) == 1:
            sentence += " — a difference of one image"
        elif key == "cam_ad" and n and abs(scored[0][1] - runner_value) < 100 / n:
            sentence += " — less than one image can change"
        sentences.append(sentence + ".")
    return sentences


def _summary(rows: Sequence[Mapping[str, Any]]) -> str:
    """Who was best in how many columns, in one sentence."""
    wins: dict[str, list[str]] = {}
    separating, tied = 0, False
    for key, _, higher in _columns(rows):
        best, scored = _best(rows, key, higher)
        if len(scored) < 2 or len(best) == len(scored):
            continue
        separating += 1
        tied |= len(best) > 1
        for name in best:
            wins.setdefault(name, []).append(_SHORT[key])
    if not wins:
        return ""
    ranked = sorted(wins.items(), key=lambda item: -len(item[1]))
    parts = [f"{name}{' is best' if i == 0 else ''} in {len(won)} ({', '.join(won)})"
             for i, (name, won) in enumerate(ranked)]
    return (f"Of the {separating} column{'s' if separating != 1 else ''} where the upsamplers differ, "
            + "; ".join(parts) + (" — a tie counts for each tied upsampler." if tied else "."))


def _noise_sentences(comparison: Comparison) -> list[str]:
    """What the sample sizes mean for how far each number can be trusted."""
    counts, rows, out = comparison.counts, comparison.rows, []
    n = counts.get("cam", 0)
    if n and any("cam_ad" in r for r in rows):
        step = 100 / n
        out.append(f"CAM scores come from {n} image{'s' if n != 1 else ''}: A.I. moves in steps of {step:.1f} "
                   f"points (one image each) and one image can move A.D. by up to {step:.1f} points, so "
                   "differences of that size may reverse on other images.")
    for task, what in (("seg", "Segmentation"), ("depth", "Depth")):
        train, test = counts.get(f"{task}_train", 0), counts.get(f"{task}_test", 0)
        if test:
            out.append(f"{what} probes are trained on {train} image{'s' if train != 1 else ''} and scored on "
                       f"{test} test image{'s' if test != 1 else ''}; with this few, one image's content "
                       "weighs heavily" + (" (a class seen in a single test image counts as much in mIoU as a "
                                           "common one)" if task == "seg" else "")
                       + ", so small differences need a larger run or another seed to confirm.")
    return out


def _settings_sentences(comparison: Comparison, backbone: str | None) -> list[str]:
    """The run's settings, each said in plain words."""
    s, out = comparison.settings, []
    dense_size = s.output_size or s.image_size
    features = comparison.examples.get("features")
    grid = ""
    if features is not None:
        low = next((v for k, v in features.outputs.items() if _is_baseline(k)), None)
        if low is not None and low.ndim == 3:
            grid = f" (the backbone's own features are a {low.shape[1]}×{low.shape[2]} grid of {low.shape[0]} channels)"
    probes = any(f"{t}_test" in comparison.counts for t in ("seg", "depth"))
    cam_size = s.cam_output_size or dense_size
    outputs = ([f"{dense_size}×{dense_size} features for the probes"] if probes else []) \
        + ([f"{cam_size}×{cam_size} features for the CAMs"] if comparison.counts.get("cam") else [])
    out.append((f"Backbone {backbone}: images" if backbone else "Images")
               + f" are resized to {s.image_size}×{s.image_size} px{grid}"
               + (f"; upsamplers produce {' and '.join(outputs)}." if outputs else "."))
    if probes:
        out.append(f"Probe protocol '{s.probe_protocol}': " + _PROTOCOLS.get(s.probe_protocol, s.probe_protocol))
        if s.probe_protocol != "full" and "seg_test" in comparison.counts:
            out.append(f"Segmentation labels are shrunk to the feature grid for training by taking "
                       f"{_LABEL_REDUCE.get(s.label_reduce, repr(s.label_reduce))}; scoring is at the labels' "
                       "full resolution.")
        steps = [f"{n} steps ({what})" for task, what, n in (("seg", "segmentation", s.seg_steps),
                                                              ("depth", "depth", s.depth_steps))
                 if f"{task}_test" in comparison.counts]
        out.append(f"Probes train for {' and '.join(steps)} on {s.pixels_per_image} pixels sampled per "
                   "training image.")
    baseline = _baseline(comparison.rows)
    out.append("Predictions and CAMs on a grid coarser than the image "
               + (f"(the {baseline} row, which is not upsampled) " if baseline else "") + "are enlarged with "
               f"{_RESIZE.get(s.resize_mode, s.resize_mode)} before scoring. Every random draw uses seed {s.seed}.")
    return out


def _time_sentence(comparison: Comparison) -> str:
    protocol = comparison.settings.probe_protocol
    parts = []
    for task, what in (("seg", "segmentation"), ("depth", "depth")):
        if f"{task}_test" in comparison.counts:
            parts.append(f"the {what} " + ("test images" if protocol == "lowres" else "train and test images"))
    if comparison.counts.get("cam"):
        parts.append("the CAM images (with the classifier's larger features)")
    return ("**upsampling s, total**: wall-clock seconds spent inside that upsampler's calls over the whole run — "
            + (_join(parts) if parts else "every image") + " — not per image; **s / image** divides it by "
            "the number of images upsampled."
            + (f" The {baseline} row upsamples nothing." if (baseline := _baseline(comparison.rows)) else "")
            + " A row read from a feature store measures reading the stored features.")


def _definitions(comparison: Comparison) -> list[str]:
    return [_DEFINITIONS[key] for key, _, _ in _columns(comparison.rows)] + [_time_sentence(comparison)]


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


def _title(title: str, backbone: str | None) -> str:
    return f"{title} — {backbone}" if backbone and backbone not in title else title


def _plain(markdown: str) -> str:
    """HTML of one line of this module's markdown: escaped, with **bold** kept."""
    return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(markdown))


def report_markdown(comparison: Comparison, *, title: str = "FeatUp evaluation", notes: str = "",
                    backbone: str | None = None, figure_base: str = "",
                    figure_urls: Mapping[str, str] | None = None,
                    cam_class_names: Sequence[str] | None = None) -> str:
    """The report as markdown: table, best per column, what the numbers mean, settings, then the figures.

    Figures are linked as ``figure_base + name`` (e.g. the report folder's URL and a slash, so the
    markdown can be published away from its pictures), or as ``figure_urls[name]`` where given (e.g.
    ``data:`` URLs, which put the pictures inside a Prefect markdown artifact).
    """
    counts, protocol = comparison.counts, comparison.settings.probe_protocol
    lines = [f"# {_title(title, backbone)}", ""] + ([notes, ""] if notes else [])
    lines += [markdown_table(comparison.rows, counts, protocol)]
    summary, winners = _summary(comparison.rows), winner_sentences(comparison.rows, counts)
    if summary or winners:
        lines += ["## Best per column", ""] + ([summary, ""] if summary else []) + [f"- {w}" for w in winners] + [""]
    lines += ["## What the numbers mean", ""] + [f"- {d}" for d in _definitions(comparison)] + [""]
    noise = _noise_sentences(comparison)
    if noise:
        lines += ["## How much to trust them", ""] + [f"- {n}" for n in noise] + [""]
    lines += ["## Settings", ""] + [f"- {s}" for s in _settings_sentences(comparison, backbone)] + [""]
    for name, heading in report_figures(comparison):
        note = _figure_note(name, comparison, cam_class_names)
        url = (figure_urls or {}).get(name, figure_base + name)
        lines += [f"## {heading}", "", note, "", f"![{heading}]({url})", ""]
    return "\n".join(lines)


def _html_table(comparison: Comparison) -> str:
    rows, counts, protocol = comparison.rows, comparison.counts, comparison.settings.probe_protocol
    columns = _columns(rows)
    best = {key: set(_best(rows, key, higher)[0]) for key, _, higher in columns}
    scored = {key: len(_best(rows, key, higher)[1]) for key, _, higher in columns}
    head = "".join(f"<th>{html.escape(h)}</th>" for h in [h for _, h, _ in columns] + list(_TIME_HEADERS))
    body = ""
    for row in rows:
        name = str(row["upsampler"])
        cells = ""
        for key, _, _ in columns:
            text = _cell(row, key)
            win = name in best[key] and scored[key] > 1 and len(best[key]) < scored[key]
            cells += f"<td class='best'>{text}</td>" if win else f"<td>{text}</td>"
        cells += "".join(f"<td>{c}</td>" for c in _time_cells(row, counts, protocol))
        body += f"<tr><th scope='row'>{html.escape(name)}</th>{cells}</tr>"
    return f"<div class='scroll'><table><tr><th>upsampler</th>{head}</tr>{body}</table></div>"


_CSS = ("body{font-family:system-ui,sans-serif;max-width:70em;margin:1.5em auto;padding:0 1em;line-height:1.45;"
        "color:#222}table{border-collapse:collapse;margin:1em 0}td,th{padding:.25em .7em;text-align:right;"
        "border-bottom:1px solid #ddd}th[scope=row]{text-align:left}td.best{font-weight:bold;background:#e6f4e6}"
        "figure{margin:1.5em 0}figure img{display:block;max-width:100%;height:auto}"
        "figcaption{color:#444;font-size:.92em;margin-top:.4em}li{margin:.3em 0}.note{color:#444}"
        ".scroll{overflow-x:auto}")


def _report_html(comparison: Comparison, *, title: str, notes: str, backbone: str | None,
                 cam_class_names: Sequence[str] | None, figures: Mapping[str, bytes]) -> str:
    """The page, its figures inside it as data: URLs: one file that shows whole wherever it is opened or
    published (a presigned object-storage link reaches one object, not its neighbours)."""
    counts = comparison.counts
    full_title = html.escape(_title(title, backbone))
    summary, winners = _summary(comparison.rows), winner_sentences(comparison.rows, counts)

    def items(lines: Sequence[str]) -> str:
        return "<ul>" + "".join(f"<li>{_plain(line)}</li>" for line in lines) + "</ul>"

    head = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{full_title}</title>"
            f"<style>{_CSS}</style></head><body><h1>{full_title}</h1>")
    parts = [head]
    if notes:
        parts.append(f"<p class='note'>{html.escape(notes)}</p>")
    parts.append(_html_table(comparison))
    if summary or winners:
        parts.append("<h2>Best per column</h2>" + (f"<p>{_plain(summary)} The best value of each column is "
                                                    "highlighted in the table.</p>"
                                                    if summary else "") + items(winners))
    parts.append("<h2>What the numbers mean</h2>" + items(_definitions(comparison)))
    noise = _noise_sentences(comparison)
    if noise:
        parts.append("<h2>How much to trust them</h2>" + items(noise))
    parts.append("<h2>Settings</h2>" + items(_settings_sentences(comparison, backbone)))
    for name, heading in report_figures(comparison):
        note = html.escape(_figure_note(name, comparison, cam_class_names))
        src = "data:image/png;base64," + base64.b64encode(figures[name]).decode()
        parts.append(f"<h2>{html.escape(heading)}</h2><figure><img src='{src}' alt='{html.escape(heading)}'>"
                     f"<figcaption>{note}</figcaption></figure>")
    parts.append("</body></html>")
    return "".join(parts)


def write_report(
    comparison: Comparison,
    url: str,
    *,
    title: str = "FeatUp evaluation",
    notes: str = "",
    storage_options: Mapping[str, Any] | None = None,
    backbone: str | None = None,
    cam_class_names: Sequence[str] | None = None,
) -> list[str]:
    """Write ``index.html`` (figures inside it), ``report.md`` and the PNG figures into the folder ``url``
    (local path or fsspec URL).

    Figures: a bar chart of the table, PCA images of each upsampler's features (one basis fitted jointly),
    probe predictions against labels and depth, and CAM overlays — each where that task was run.
    ``backbone`` is named in the title; ``cam_class_names`` name the CAM classifier's classes where the
    comparison's caption does not (default: the ImageNet-1k names). Returns the URLs written, page first.
    """
    figures = {name: _draw(name, comparison, cam_class_names) for name, _ in report_figures(comparison)}
    page = _report_html(comparison, title=title, notes=notes, backbone=backbone, cam_class_names=cam_class_names,
                        figures=figures)
    markdown = report_markdown(comparison, title=title, notes=notes, backbone=backbone,
                               cam_class_names=cam_class_names)
    written = []
    for name, data in [("index.html", page.encode()), ("report.md", markdown.encode()), *figures.items()]:
        written.append(join_url(url, name))
        write_bytes(written[-1], data, storage_options, content_type=_MEDIA_TYPES[name[name.rindex("."):]])
    return written


# recorded with each object where the store keeps one (S3): served as binary/octet-stream, a browser following
# a link to the page would download it instead of showing it
_MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".md": "text/markdown; charset=utf-8", ".png": "image/png"}

