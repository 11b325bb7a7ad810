"""The report in words: what each metric means, what the sample sizes mean for noise, the settings in plain
words, and the whole report as markdown."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from featup.eval._report_figures import _figure_note, report_figures
from featup.eval._report_table import (
    _baseline,
    _columns,
    _is_baseline,
    _join,
    _summary,
    markdown_table,
    winner_sentences,
)
from featup.eval.compare import Comparison

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


def _title(title: str, backbone: str | None) -> str:
    return f"{title} — {backbone}" if backbone and backbone not in title else title


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
