"""Render a comparison as a markdown report and an HTML page with PNG figures, on any fsspec URL.

The report explains itself: every metric is defined with its unit and direction, the best upsampler of
each column is named, sample sizes are turned into what they mean for noise, and the settings are said
in plain words. Metrics have one scale everywhere (the table, the chart, `table_records`): A.D., A.I.,
mIoU, accuracy and δ<1.25 in percent, RMSE in the depth maps' units, time in seconds.

One module per part: ``_report_table`` (the numbers and who wins), ``_report_text`` (the sentences and the
markdown), ``_report_figures`` (the PNGs and their captions), ``_report_page`` (the HTML page); this one
writes them all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from featup.eval._report_figures import _draw, legend_classes, report_figures
from featup.eval._report_page import _report_html
from featup.eval._report_table import markdown_table, table_records, winner_sentences
from featup.eval._report_text import report_markdown
from featup.eval.compare import Comparison
from featup.io import join_url, write_bytes

__all__ = [
    "legend_classes",
    "markdown_table",
    "report_figures",
    "report_markdown",
    "table_records",
    "winner_sentences",
    "write_report",
]


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
