"""The bench report as one self-contained HTML file.

Inline CSS, figures as base64 PNG data URIs, no scripts and no external resources, so the file opens offline
and can be mailed or archived as is. Every text from the data (example prompts and responses, ids, task
labels, method names) is HTML-escaped. The tables are those of `gradsift.report.markdown`.
"""

from __future__ import annotations

import base64
from html import escape

from gradsift.report.data import ReportData
from gradsift.report.markdown import (
    COMPARISONS_TEXT,
    Table,
    all_metrics_table,
    comparison_table,
    efficiency_table,
    extremes_tables,
    feasibility_table,
    fmt,
    lr_table,
    overlap_table,
    prepare_table,
    results_table,
    task_share_table,
    verdicts,
)

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #1d2430;
       background: #fafbfc; line-height: 1.45; }
main { max-width: 1160px; margin: 0 auto; padding: 24px 28px 60px; }
h1 { font-size: 1.7em; margin: 0.2em 0 0.1em; }
h2 { font-size: 1.25em; margin-top: 2.2em; padding-bottom: 0.25em; border-bottom: 1px solid #d8dde4; }
h3 { font-size: 1.02em; margin: 1.4em 0 0.4em; }
p.lead { color: #4a5565; margin-top: 0; }
nav { font-size: 0.9em; margin: 0.8em 0 0; }
nav a { margin-right: 0.9em; color: #2659a8; text-decoration: none; }
.scroll { overflow-x: auto; margin: 0.6em 0; }
table { border-collapse: collapse; font-size: 0.84em; background: white; }
th, td { border: 1px solid #dde2e8; padding: 3px 8px; vertical-align: top; }
th { background: #eef1f5; text-align: left; font-weight: 600; }
table.wide { width: 100%; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.text { max-width: 420px; overflow-wrap: break-word; }
tr.pos td { background: #eef8ee; }
tr.neg td { background: #fbefef; }
tr.baseline td { color: #555; background: #f6f6f6; }
table.kv td:first-child { font-weight: 600; white-space: nowrap; }
figure { margin: 1em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #e3e6ea; background: white; }
figcaption { font-size: 0.85em; color: #4a5565; }
.cols { display: flex; gap: 28px; flex-wrap: wrap; align-items: flex-start; }
details summary { cursor: pointer; color: #2659a8; margin: 0.6em 0; }
ul.notes li { margin: 0.2em 0; }
footer { margin-top: 3em; font-size: 0.8em; color: #6b7480; }
"""

SECTIONS = (
    ("comparisons", "Paired comparisons"),
    ("cost", "Cost and quality"),
    ("efficiency", "Efficiency"),
    ("results", "Results"),
    ("feasibility", "Feasibility"),
    ("balance", "Task balance"),
    ("scores", "Score distributions"),
    ("examples", "Top and bottom examples"),
    ("overlap", "Overlap"),
    ("notes", "Notes"),
)


def html_table(t: Table, css_class: str = "", header: bool = True) -> str:
    """A table with escaped cells; numeric columns right-aligned, long text wrapped."""
    if not t.rows:
        return "<p><em>(none)</em></p>"
    cols = "".join(f"<th>{escape(h)}</th>" for h in t.headers)
    head = f"<thead><tr>{cols}</tr></thead>" if header else ""
    body = []
    for i, row in enumerate(t.rows):
        cls = t.classes[i] if i < len(t.classes) and t.classes[i] else ""
        cells = "".join(
            f'<td class="{"num" if num else "text"}">{escape(cell)}</td>'
            for cell, num in zip(row, t.numeric, strict=True)
        )
        body.append(f'<tr class="{cls}">{cells}</tr>' if cls else f"<tr>{cells}</tr>")
    attr = f' class="{css_class}"' if css_class else ""
    return f'<div class="scroll"><table{attr}>{head}<tbody>{"".join(body)}</tbody></table></div>'


def kv_table(items: dict[str, object]) -> str:
    """A two-column key/value table without a header."""
    return html_table(Table(["", ""], [[k, str(v)] for k, v in items.items()], [False, False]), "kv", header=False)


def figure_html(figures: dict[str, bytes], name: str, caption: str) -> str:
    """Figure `name` as an inline PNG with its caption, or a placeholder when there is nothing to plot."""
    if name not in figures:
        return "<p><em>(nothing to plot)</em></p>"
    b64 = base64.b64encode(figures[name]).decode("ascii")
    return (
        f'<figure><img alt="{escape(caption)}" src="data:image/png;base64,{b64}">'
        f"<figcaption>{escape(caption)}</figcaption></figure>"
    )


def _comparisons(data: ReportData, figures: dict[str, bytes]) -> list[str]:
    """The paired comparisons with their verdicts, the cost-quality figure, the learning rate and prepare."""
    if not data.comparisons:
        return ['<h2 id="comparisons">Paired comparisons</h2>', "<p><em>(no per-example results)</em></p>"]
    out = ['<h2 id="comparisons">Paired comparisons</h2>', f"<p>{escape(COMPARISONS_TEXT)}</p>"]
    out.append('<ul class="notes">' + "".join(f"<li>{escape(v)}</li>" for v in verdicts(data)) + "</ul>")
    for name, b in data.comparisons.items():
        better = "higher" if b["higher_is_better"] else "lower"
        out.append(f"<h3>{escape(name)}: {escape(str(b['metric']))} ({better} is better, {b['n_eval']} examples)</h3>")
        out.append(html_table(comparison_table(data, name)))
        for metric in b.get("secondary", {}):
            out.append(f"<h3>{escape(name)}: {escape(metric)}</h3>{html_table(comparison_table(data, name, metric))}")
    out.append('<h2 id="cost">Cost and quality</h2>')
    out.append(
        "<p>Each method's gain over random at the same budget (oriented so that up is better, with its 95% "
        "interval) against what its selection cost. Points above 0 whose bars clear 0 beat random; the further "
        "left, the cheaper the gain.</p>"
    )
    out.append(figure_html(figures, "cost_quality", "Quality gain over random against selection cost, per benchmark."))
    if data.lr_search is not None:
        out.append('<h3 id="lr">Learning rate</h3>')
        out.append(
            f"<p>Chosen once on random selections: {escape(str(data.lr_search['metric']))} of "
            f"{escape(str(data.lr_search['benchmark']))} on set {escape(str(data.lr_search['data']))}, mean over "
            f"budgets; chosen {data.lr_search['chosen']:g} (green).</p>"
        )
        out.append(html_table(lr_table(data)))
    if data.prepare:
        out.append('<h3 id="prepare">Prepare steps</h3>' + html_table(prepare_table(data)))
    return out


def render_html(data: ReportData, figures: dict[str, bytes]) -> str:
    """The report as a self-contained HTML page.

    Args:
        data: What to report.
        figures: PNG bytes by figure name (`gradsift.report.plots.make_figures`).

    Returns:
        The HTML text.
    """
    a, b = data.references
    nav = "".join(f'<a href="#{sid}">{escape(title)}</a>' for sid, title in SECTIONS)
    bench_rows = [
        [x.name, x.task, x.metric, "higher" if x.higher_is_better else "lower", fmt(x.n)] for x in data.benchmarks
    ]
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>gradsift bench: {escape(data.title)}</title>",
        f"<style>{CSS}</style></head><body><main>",
        f"<h1>gradsift bench: {escape(data.title)}</h1>",
        f'<p class="lead">Created {escape(data.created)} on {escape(data.machine.get("processor", "?"))}, '
        f"GPU: {escape(data.machine.get('gpu', '?'))}.</p>",
        f"<nav>{nav}</nav>",
        '<div class="cols"><div><h2 id="scenario">Scenario</h2>',
        kv_table(dict(data.settings)),
        html_table(Table(["benchmark", "task", "metric", "better", "n"], bench_rows, [False] * 4 + [True])),
        '</div><div><h2 id="machine">Machine</h2>',
        kv_table(dict(data.machine)),
        "</div></div>",
        *_comparisons(data, figures),
        '<h2 id="efficiency">Efficiency: SDF, PIR and distance from the reference line</h2>',
        "<p>SDF is the fraction of the pool a method selected. PIR is the mean over benchmarks of the model's "
        "metric relative to full-data training (inverted for losses, so above 1 is better than full data). "
        f"Efficiency is the signed distance of a method's (SDF, PIR) point above the line through {escape(a)} and "
        f"{escape(b)} at the same budget (methods.md section 5); green rows lie above it, red rows below.</p>",
        html_table(efficiency_table(data)),
        figure_html(figures, "pir_vs_sdf", "PIR against SDF per method and budget; dashed: the reference lines."),
        figure_html(
            figures, "metric_vs_budget", "Each benchmark's metric against SDF; lines: full data and untrained."
        ),
        '<h2 id="results">Results</h2>',
        "<p>One row per trained model (method, budget, seed); grey rows are baselines.</p>",
        html_table(results_table(data)),
        "<details><summary>every metric column</summary>",
        html_table(all_metrics_table(data)),
        "</details>",
        '<h2 id="feasibility">Feasibility</h2>',
        "<p>The survey's penalties: simplicity = 2 x models trained + steps + 1 without released code; "
        "flexibility = 3 x needs the target model + 2 x needs target data + 1 x needs an external LLM API. "
        "Ranks: 1 is best; the feasibility rank ranks the sum of the two ranks.</p>",
        html_table(feasibility_table(data)),
        '<h2 id="balance">Task balance of the selections</h2>',
        "<p>Share of each task label in the pool and in each selection (largest budget, first seed).</p>",
        html_table(task_share_table(data)),
        figure_html(figures, "task_balance", "Task shares of the pool and of each selection."),
        '<h2 id="scores">Score distributions</h2>',
        figure_html(figures, "score_distributions", "Each method's scores over the pool; selected rows in colour."),
        '<h2 id="examples">Top and bottom examples</h2>',
        "<p>The five highest- and lowest-scored pool records of each method (text shortened).</p>",
    ]
    extremes = extremes_tables(data)
    if not extremes:
        out.append("<p><em>(no scored selections)</em></p>")
    for method, (top, bottom) in extremes.items():
        out.append(f"<h3>{escape(method)}: highest scores</h3>{html_table(top, 'wide')}")
        out.append(f"<h3>{escape(method)}: lowest scores</h3>{html_table(bottom, 'wide')}")
    expected = data.overlap.expected_random
    out += [
        '<h2 id="overlap">Overlap between selections</h2>',
        "<p>Jaccard index |A ∩ B| / |A ∪ B| of every two selections"
        + (f"; two independent random selections of this size overlap {expected:.3f} on average." if expected else ".")
        + "</p>",
        '<div class="cols"><div>',
        html_table(overlap_table(data)),
        "</div><div>",
        figure_html(figures, "overlap", "Jaccard overlap."),
        "</div></div>",
        '<h2 id="notes">Notes</h2>',
    ]
    notes = [f"method <code>{escape(m)}</code> was not run: {escape(why)}" for m, why in data.unavailable.items()]
    notes += [escape(n) for n in data.notes]
    out.append('<ul class="notes">' + "".join(f"<li>{n}</li>" for n in notes) + "</ul>" if notes else "<p>None.</p>")
    out.append(f"<footer>gradsift {escape(data.machine.get('gradsift', ''))} bench report.</footer>")
    out.append("</main></body></html>")
    return "\n".join(out)
