"""The report's numbers: each metric on one scale (percent for fractions), the table as markdown and as
records, and who is best in each column."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from featup.eval.compare import METRICS

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
