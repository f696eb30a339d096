"""The selection report (``report.html`` beside a selection's outputs) as one self-contained HTML page.

What was picked (score distributions with the cut, composition of pool and selection by task, source file
and response length, overlap between methods), why (each method's first selected examples with the targets
they help most or their position in the band), and at what cost (time by stage, settings). Inline CSS,
figures as base64 PNG, no scripts and no external resources; every text from the data is HTML-escaped.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

import numpy as np

from gradsift.report.html import CSS, figure_html, html_table, kv_table
from gradsift.report.markdown import Table, fmt, pct, truncate
from gradsift.report.selection_data import MethodView, SelectionReport, Shares, Shown

PROMPT_CHARS = 220
RESPONSE_CHARS = 260
INFO_CHARS = 12_000
"""Longest method-details JSON shown per method."""

# Cells of the "why" column hold one line per target.
PAGE_CSS = CSS + "td.text { white-space: pre-line; }\npre { font-size: 0.8em; white-space: pre-wrap; }\n"

SECTIONS = (
    ("summary", "Summary"),
    ("scores", "Scores"),
    ("composition", "Composition"),
    ("overlap", "Overlap"),
    ("examples", "Examples"),
    ("timings", "Time"),
    ("settings", "Settings"),
)


def summary_table(data: SelectionReport) -> Table:
    """Per method: selection size and share, how it was made, and the mean plotted value in it and in the pool."""
    rows = []
    for m in data.methods:
        values = np.asarray(m.plotted, dtype=np.float64)
        ok = np.isfinite(values)
        picked = values[m.selected] if len(m.selected) else np.array([])
        picked = picked[np.isfinite(picked)]
        rows.append(
            [
                m.name,
                fmt(len(m.selected)),
                pct(len(m.selected) / data.n_pool if data.n_pool else float("nan")),
                m.order,
                m.plotted_label,
                fmt(float(picked.mean()) if len(picked) else None),
                fmt(float(values[ok].mean()) if ok.any() else None),
            ]
        )
    headers = ["method", "selected", "of the pool", "how", "value", "mean: selected", "mean: pool"]
    return Table(headers, rows, [False, True, True, False, False, True, True])


def shares_table(shares: Shares) -> Table:
    """Label | pool count | pool share | each selection's share."""
    rows = [
        [label, fmt(shares.counts[i]), pct(shares.pool[i]), *[pct(s[i]) for s in shares.selections.values()]]
        for i, label in enumerate(shares.labels)
    ]
    headers = [shares.title, "pool n", "pool", *shares.selections]
    return Table(headers, rows, [False, True, True, *[True] * len(shares.selections)])


def lengths_table(data: SelectionReport) -> Table:
    """Response-length quantiles of the pool and each selection."""
    rows = [[name, *[fmt(x) for x in q]] for name, q in data.lengths.quantiles.items()]
    return Table(["", "min", "25%", "median", "75%", "max"], rows, [False] + [True] * 5)


def matrix_table(names: list[str], mat: np.ndarray) -> Table:
    """A square matrix with the method names on both sides."""
    rows = [[a, *[fmt(float(mat[i, j]), 3) for j in range(len(names))]] for i, a in enumerate(names)]
    return Table(["", *names], rows, [False] + [True] * len(names))


def _why(shown: Shown) -> str:
    if shown.helps:
        return "\n".join(
            f"{j + 1}. {h.target_id} ({fmt(h.value, 3)})" + (f": {truncate(h.text, 160)}" if h.text else "")
            for j, h in enumerate(shown.helps)
        )
    if shown.band:
        where = "in the band" if shown.in_band else "outside the band" if shown.in_band is False else ""
        pos = ", ".join(f"{name} at the {fmt(p, 3)}th percentile" for name, p in shown.band.items())
        return f"{pos}{'; ' + where if where else ''}"
    return ""


def examples_table(m: MethodView, items: list[Shown]) -> Table:
    """A method's shown records: rank, score, (raw value), id, task, prompt, response and "why"."""
    has_value = any(np.isfinite(s.value) for s in items)
    headers = ["rank", "score", *([m.plotted_label] if has_value else []), "id", "task", "prompt", "response"]
    numeric = [True, True, *([True] if has_value else []), False, False, False, False]
    if m.why:
        headers.append(m.why)
        numeric.append(False)
    rows = []
    for s in items:
        row = [
            fmt(s.rank + 1) if s.rank is not None else "-",
            fmt(s.score),
            *([fmt(s.value)] if has_value else []),
            s.item.id,
            s.item.task or "-",
            truncate(s.item.prompt, PROMPT_CHARS),
            truncate(s.item.response, RESPONSE_CHARS),
        ]
        if m.why:
            row.append(_why(s))
        rows.append(row)
    return Table(headers, rows, numeric, ["pos" if s.rank is not None else "" for s in items])


def timings_table(data: SelectionReport) -> Table:
    """Seconds and share of the total per stage."""
    total = data.timings.get("total") or sum(v for k, v in data.timings.items() if k != "total")
    rows = [[k, f"{v:.3g}", pct(v / total) if total else "-"] for k, v in data.timings.items() if k != "total"]
    if "total" in data.timings:
        rows.append(["total", f"{data.timings['total']:.3g}", pct(1.0)])
    return Table(["stage", "seconds", "share"], rows, [False, True, True])


def _details(name: str, info: dict[str, Any]) -> str:
    text = json.dumps(info, indent=1, default=str)
    if len(text) > INFO_CHARS:
        text = text[:INFO_CHARS] + f"\n… ({len(text) - INFO_CHARS} more characters in config.json)"
    return f"<details><summary>{escape(name)}</summary><pre>{escape(text)}</pre></details>"


def render_selection_html(data: SelectionReport, figures: dict[str, bytes]) -> str:
    """The selection report as a self-contained HTML page.

    Args:
        data: What to report.
        figures: PNG bytes by figure name (`gradsift.report.selection_plots.make_figures`).

    Returns:
        The HTML text.
    """
    names = [m.name for m in data.methods]
    nav = "".join(f'<a href="#{sid}">{escape(title)}</a>' for sid, title in SECTIONS)
    total = data.timings.get("total")
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>gradsift select: {escape(data.title)}</title>",
        f"<style>{PAGE_CSS}</style></head><body><main>",
        f"<h1>gradsift select: {escape(data.title)}</h1>",
        f'<p class="lead">{data.n_pool:,} candidates ({"preference pairs" if data.kind == "pair" else "examples"}), '
        f"methods {escape(', '.join(names))}; "
        + (f"{total:.3g} s in all; " if total is not None else "")
        + f"report made {escape(data.created)}.</p>",
        f"<nav>{nav}</nav>",
        '<h2 id="summary">Summary</h2>',
        html_table(summary_table(data)),
        '<h2 id="scores">Score distributions</h2>',
        "<p>Each method's values over the whole pool; the selected candidates are stacked in colour. Dashed "
        "lines mark the cut: the lowest selected score of a top-k method, the band limits of a band method "
        "(BIDS picks iteratively and has no single cut).</p>",
        figure_html(figures, "scores", "Distribution of each method's values; selected in colour."),
        '<h2 id="composition">Composition: pool and selections</h2>',
        "<h3>By task label</h3>",
        "<p>Share of each task label in the pool and in each selection.</p>",
        html_table(shares_table(data.tasks)),
        figure_html(figures, "tasks", "Task shares of the pool and of each selection."),
        "<h3>By source file</h3>",
        html_table(shares_table(data.sources)),
    ]
    if "sources" in figures:
        out.append(figure_html(figures, "sources", "Source-file shares of the pool and of each selection."))
    out += [
        f"<h3>By response length ({escape(data.lengths.unit)})</h3>",
        html_table(lengths_table(data)),
        figure_html(figures, "lengths", "Response-length distribution of the pool and of each selection."),
        '<h2 id="overlap">Overlap between methods</h2>',
    ]
    if len(names) < 2:
        out.append("<p>One method: nothing to compare.</p>")
    else:
        expected = data.overlap.expected_random
        out += [
            "<p>Jaccard index |A ∩ B| / |A ∪ B| of every two selections"
            + (f" (two independent random selections of this size: {expected:.3f} on average)" if expected else "")
            + "; Spearman rank correlation of every two methods' values over the candidates both scored.</p>",
            '<div class="cols"><div><h3>Jaccard</h3>',
            html_table(matrix_table(names, data.overlap.jaccard)),
            "</div><div><h3>Spearman</h3>",
            html_table(matrix_table(names, data.spearman)),
            "</div></div>",
            figure_html(figures, "overlap", "Jaccard overlap of the selections and rank correlation of the scores."),
            figure_html(figures, "rank_scatter", "Score percentiles of every two methods, on a subsample."),
        ]
    out += [
        '<h2 id="examples">Top and bottom examples</h2>',
        "<p>Each method's first selected candidates (green) in selection order, and the candidates with its "
        "lowest values. For LESS, PRISM and BIDS the last column names the targets a candidate helps most with "
        "the method's per-target influence; for TIF, LossDiff, IRM and fusion it gives the candidate's position "
        "in the band. Text shortened.</p>",
    ]
    for m in data.methods:
        name, lowest = escape(m.name), escape(m.plotted_label)
        out.append(f"<h3>{name}: first selected</h3>{html_table(examples_table(m, m.top), 'wide')}")
        out.append(f"<h3>{name}: lowest {lowest}</h3>{html_table(examples_table(m, m.bottom), 'wide')}")
    out += [
        '<h2 id="timings">Time</h2>',
        html_table(timings_table(data)),
        figure_html(figures, "timings", "Seconds by stage."),
    ]
    if data.detail_timings:
        detail = Table(["step", "seconds"], [[k, f"{v:.3g}"] for k, v in data.detail_timings.items()], [False, True])
        out.append(f"<details><summary>steps inside the methods</summary>{html_table(detail)}</details>")
    out += [
        '<h2 id="settings">Settings</h2>',
        '<div class="cols"><div><h3>Run</h3>',
        kv_table({k: _setting(v) for k, v in data.settings.items()}),
        "</div><div><h3>Model, data and machine</h3>",
        kv_table(dict(data.provenance)),
    ]
    if data.tokenization:
        out += ["<h3>Tokenisation</h3>", kv_table({k: _setting(v) for k, v in data.tokenization.items()})]
    out.append("</div></div><h3>Method details (config.json)</h3>")
    out += [_details(m.name, m.info) for m in data.methods]
    if data.notes:
        out.append(
            "<h3>Notes</h3>" + '<ul class="notes">' + "".join(f"<li>{escape(n)}</li>" for n in data.notes) + "</ul>"
        )
    out.append("<footer>gradsift selection report; rebuild it with <code>gradsift report RUN_DIR</code>.</footer>")
    out.append("</main></body></html>")
    return "\n".join(out)


def _setting(value: Any) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    return fmt(value) if isinstance(value, float) else str(value)
