"""The report as one HTML page, its figures inside it."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Mapping, Sequence

from featup.eval._report_figures import _figure_note, report_figures
from featup.eval._report_table import _TIME_HEADERS, _best, _cell, _columns, _summary, _time_cells, winner_sentences
from featup.eval._report_text import _definitions, _noise_sentences, _settings_sentences, _title
from featup.eval.compare import Comparison


def _plain(markdown: str) -> str:
    """HTML of one line of this module's markdown: escaped, with **bold** kept."""
    return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(markdown))


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
