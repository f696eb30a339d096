"""The bench report's tables and its Markdown rendering (for terminals and diffs).

The tables (`report_tables`) are built here once, as plain text cells, and rendered both as Markdown
(`render_markdown`) and as HTML (`gradsift.report.html`), so both versions show the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from gradsift.report.data import BASELINES, SMOKE_PREFIX, ReportData

PROMPT_CHARS = 160
RESPONSE_CHARS = 220
N_EXTREMES = 5


@dataclass
class Table:
    """A table of formatted cells.

    Attributes:
        headers: Column names.
        rows: Cells as text (not escaped).
        numeric: Per column, whether it holds numbers (right-aligned).
        classes: Optional CSS class per row (HTML only), e.g. to mark baselines.
    """

    headers: list[str]
    rows: list[list[str]]
    numeric: list[bool]
    classes: list[str] = field(default_factory=list)


def fmt(x: Any, digits: int = 4) -> str:
    """A number for a table: ``-`` for missing or NaN, integers as such, floats to `digits` significant digits."""
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if math.isnan(v):
        return "-"
    if v.is_integer() and abs(v) < 1e6:
        return str(int(v))
    return f"{v:.{digits}g}"


def fixed(x: Any, decimals: int = 4) -> str:
    """A ratio such as PIR with fixed decimals (ratios near 1 differ in the later digits)."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "-"
    return "-" if math.isnan(v) else f"{v:.{decimals}f}"


def pct(x: Any) -> str:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "-"
    return "-" if math.isnan(v) else f"{v:.1%}"


def truncate(text: str, n: int) -> str:
    """At most `n` characters on one line (newlines shown as ``⏎``), with ``…`` when cut."""
    flat = " ⏎ ".join(line.strip() for line in text.strip().splitlines() if line.strip())
    return flat if len(flat) <= n else flat[: n - 1].rstrip() + "…"


def efficiency_table(data: ReportData) -> Table:
    """Per budget and method: SDF, PIR (mean ± std over seeds), per-benchmark ratios, efficiency and rank."""
    benches = [b.name for b in data.benchmarks]
    headers = ["budget", "method", "seeds", "SDF", "PIR", "± std", *[f"PIR {b}" for b in benches]]
    headers += ["efficiency", "rank"]
    rows = []
    for r in data.efficiency:
        rows.append(
            [
                str(r["budget"]),
                str(r["method"]),
                fmt(r.get("n_seeds")),
                pct(r["sdf"]),
                fixed(r["pir"]),
                fixed(r.get("pir_std")),
                *[fixed(r.get(f"pir.{b}")) for b in benches],
                fmt(r.get("efficiency"), 3),
                fmt(r.get("efficiency_rank")),
            ]
        )
    numeric = [False, False] + [True] * (len(headers) - 2)
    classes = [_sign_class(r.get("efficiency")) for r in data.efficiency]
    return Table(headers, rows, numeric, classes)


def _sign_class(x: Any) -> str:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return ""
    if math.isnan(v) or abs(v) < 1e-12:
        return ""
    return "pos" if v > 0 else "neg"


REFERENCE_COLUMNS = (
    ("random", "vs random"),
    ("full", "vs full"),
    ("full_epoch", "vs full-epoch"),
    ("embed", "vs embed"),
)
"""The paired comparisons a table shows, by entry key (``vs_<key>``) and header."""


def interval(mean: Any, low: Any, high: Any, signed: bool = False) -> str:
    """``mean [low, high]``: a mean to 4 significant digits, a signed difference (+ on positive ones) to 3."""
    if mean is None:
        return "-"
    f = (lambda x: f"{float(x):+.3g}") if signed else (lambda x: f"{float(x):.4g}")
    return f"{f(mean)} [{f(low)}, {f(high)}]"


def versus(vs: dict[str, Any] | None) -> str:
    """A paired comparison as ``diff [low, high]`` with its verdict (``better``/``worse``; nothing when the
    interval includes 0)."""
    if not vs:
        return "-"
    word = {"better": " better", "worse": " worse"}.get(str(vs["verdict"]), "")
    return interval(vs["diff"], vs["ci95_low"], vs["ci95_high"], signed=True) + word


def _order(data: ReportData, methods: dict[str, Any]) -> list[tuple[str, str]]:
    """(method, budget) pairs in table order: baselines first, then per budget the methods as run."""
    seen = list(dict.fromkeys(str(m) for m in data.table["method"])) if len(data.table) else []
    names = [m for m in seen if m in methods] + [m for m in methods if m not in seen]
    budgets = list(dict.fromkeys(str(b) for b in data.table["budget"])) if len(data.table) else []
    pairs = [(m, b) for m in names for b in methods[m]]
    return sorted(pairs, key=lambda p: (p[0] not in BASELINES, budgets.index(p[1]) if p[1] in budgets else 0))


def comparison_table(data: ReportData, benchmark: str, metric: str | None = None) -> Table:
    """One benchmark metric: each (method, budget)'s mean with its 95% interval, its paired differences from
    random, full, full-epoch and embed (method minus reference, with the verdict), and its selection cost."""
    b = data.comparisons[benchmark]
    methods = b["methods"] if metric is None or metric == b["metric"] else b["secondary"][metric]["methods"]
    refs = [(k, h) for k, h in REFERENCE_COLUMNS if any(f"vs_{k}" in e for m in methods.values() for e in m.values())]
    headers = ["method", "budget", "seeds", "mean [95% CI]", *[h for _, h in refs], "select CPU s", "select wall s"]
    rows, classes = [], []
    for m, budget in _order(data, methods):
        e = methods[m][budget]
        rows.append(
            [
                m,
                budget,
                fmt(e.get("n_seeds")),
                interval(e["mean"], e["ci95_low"], e["ci95_high"]),
                *[versus(e.get(f"vs_{k}")) for k, _ in refs],
                fmt(e.get("select_cpu_s")),
                fmt(e.get("select_wall_s")),
            ]
        )
        vs = e.get("vs_random") or {}
        classes.append(
            "baseline" if m in BASELINES else {"better": "pos", "worse": "neg"}.get(str(vs.get("verdict")), "")
        )
    return Table(headers, rows, [False, False] + [True] * (len(headers) - 2), classes)


def verdicts(data: ReportData) -> list[str]:
    """One sentence per benchmark and reference: which selection methods beat it (interval excluding 0 on the
    better side), or that none does."""
    # an underpowered run says so before any "beat"
    out = [n for n in data.notes if n.startswith(SMOKE_PREFIX)]
    for name, b in data.comparisons.items():
        for key, label in (("random", "random at the same budget"), ("full", "full data (same steps)")):
            winners = [
                f"{m} ({budget})"
                for m, by_budget in b["methods"].items()
                for budget, e in by_budget.items()
                if m not in BASELINES and (e.get(f"vs_{key}") or {}).get("verdict") == "better"
            ]
            if not any(f"vs_{key}" in e for by in b["methods"].values() for e in by.values()):
                continue
            said = ", ".join(winners) if winners else "none"
            out.append(f"{name} ({b['metric']}): beat {label}: {said}.")
    return out


def lr_table(data: ReportData) -> Table:
    """The learning-rate search: the deciding metric per rate and budget, and its mean."""
    lr = data.lr_search
    if lr is None:
        return Table([], [], [])
    rows = [[rate, *[fmt(v[b]) for b in lr["budgets"]], fmt(v["mean"])] for rate, v in lr["values"].items()]
    classes = ["pos" if float(rate) == lr["chosen"] else "" for rate in lr["values"]]
    return Table(["lr", *lr["budgets"], "mean"], rows, [True] * (len(lr["budgets"]) + 2), classes)


def prepare_table(data: ReportData) -> Table:
    """Each prepare step: its rounds, the check before and after each round, its target and whether reached."""
    rows = []
    for name, step in data.prepare.items():
        until = step.get("until")
        if until is None:
            rows.append([name, fmt(step["rounds"]), "-", "-", "-"])
            continue
        bound = f"{until['metric']} {'>=' if until['at_least'] is not None else '<='} "
        bound += fmt(until["at_least"] if until["at_least"] is not None else until["at_most"])
        checks = " → ".join(fmt(v, 3) for v in step["checks"])
        rows.append([name, fmt(step["rounds"]), checks, bound, "yes" if step["met"] else "NO"])
    return Table(["step", "rounds", "check before and after each round", "target", "reached"], rows, [False] * 5)


def results_table(data: ReportData) -> Table:
    """One row per trained model: the benchmarks' primary metrics, PIR, training and timing."""
    t = data.table
    cols = [b.column for b in data.benchmarks]
    headers = ["method", "budget", "k", "seed", "SDF", *cols, "PIR", "lr", "steps", "train loss", "select CPU s"]
    headers += ["select wall s", "train s", "eval s"]
    rows, classes = [], []
    for _, r in t.iterrows():
        rows.append(
            [
                str(r["method"]),
                str(r["budget"]),
                fmt(r.get("k")),
                fmt(r.get("seed")),
                pct(r.get("sdf")),
                *[fmt(r.get(c)) for c in cols],
                fixed(r.get("pir")),
                fmt(r.get("lr")),
                fmt(r.get("train_steps")),
                fmt(r.get("train_loss")),
                fmt(r.get("select_cpu_s"), 3),
                fmt(r.get("select_wall_s"), 3),
                fmt(r.get("train_s"), 3),
                fmt(r.get("eval_s"), 3),
            ]
        )
        classes.append("baseline" if r["method"] in BASELINES else "")
    numeric = [False, False] + [True] * (len(headers) - 2)
    return Table(headers, rows, numeric, classes)


def all_metrics_table(data: ReportData) -> Table:
    """Every metric column of the results (``<benchmark>.<metric>``, ``pir.<benchmark>``)."""
    t = data.table
    keys = ["method", "budget", "seed"]
    metric_cols = [c for c in t.columns if "." in c]
    rows = [[str(r[k]) for k in keys] + [fmt(r.get(c)) for c in metric_cols] for _, r in t.iterrows()]
    return Table(keys + metric_cols, rows, [False, False, True] + [True] * len(metric_cols))


def feasibility_table(data: ReportData) -> Table:
    """The survey's feasibility inputs, penalties and ranks of the methods run."""
    headers = ["method", "LLMs trained", "steps", "needs model", "needs targets", "needs LLM API"]
    headers += ["simplicity penalty", "flexibility penalty", "simplicity rank", "flexibility rank", "feasibility rank"]
    rows = [
        [
            str(r["method"]),
            fmt(r["models_trained"]),
            fmt(r["steps"]),
            fmt(bool(r["needs_target_model"])),
            fmt(bool(r["needs_target_data"])),
            fmt(bool(r["needs_llm_api"])),
            fmt(r["simplicity_penalty"]),
            fmt(r["flexibility_penalty"]),
            fmt(r["simplicity_rank"]),
            fmt(r["flexibility_rank"]),
            fmt(r["feasibility_rank"]),
        ]
        for r in data.feasibility
    ]
    return Table(headers, rows, [False] + [True] * (len(headers) - 1))


def task_share_table(data: ReportData) -> Table:
    """Share of each task in the pool and in each method's selection."""
    tasks, shares = data.task_shares.tasks, data.task_shares.shares
    names = list(shares)
    rows = [[t, *[pct(shares[n].get(t, 0.0)) for n in names]] for t in tasks]
    return Table(["task", *names], rows, [False] + [True] * len(names))


def overlap_table(data: ReportData) -> Table:
    """Jaccard overlap of every two selections."""
    names, mat = data.overlap.methods, data.overlap.jaccard
    rows = [[n, *[fmt(v, 3) for v in mat[i]]] for i, n in enumerate(names)]
    return Table(["", *names], rows, [False] + [True] * len(names))


def extremes_tables(data: ReportData) -> dict[str, tuple[Table, Table]]:
    """Per method with scores: its top and bottom `N_EXTREMES` pool rows with score, id, task and texts."""
    out = {}
    for s in data.selections:
        top, bottom = data.extremes(s.method, N_EXTREMES)
        if not top:
            continue
        chosen = set(s.rows)

        def table(items: list[tuple[int, float]], chosen: set[int] = chosen) -> Table:
            rows = []
            for row, score in items:
                p = data.pool[row]
                rows.append(
                    [
                        fmt(score),
                        "yes" if row in chosen else "no",
                        p.id,
                        p.task or "-",
                        truncate(p.prompt, PROMPT_CHARS),
                        truncate(p.response, RESPONSE_CHARS),
                    ]
                )
            return Table(["score", "selected", "id", "task", "prompt", "response"], rows, [True] + [False] * 5)

        out[s.method] = (table(top), table(bottom))
    return out


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def markdown_table(t: Table) -> str:
    """A GitHub-flavoured Markdown table."""
    if not t.rows:
        return "_(none)_\n"
    head = "| " + " | ".join(_md_cell(h) for h in t.headers) + " |"
    sep = "| " + " | ".join("---:" if n else "---" for n in t.numeric) + " |"
    body = ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in t.rows]
    return "\n".join([head, sep, *body]) + "\n"


COMPARISONS_TEXT = (
    "Mean over the evaluation examples of each model's per-example metric, averaged over training seeds, with a "
    "bootstrap 95% interval over examples and seeds. Each difference is method minus reference, paired on the "
    'same examples; a method beats its reference ("better") only where the interval excludes 0 on the better '
    "side of the metric. Selection cost: CPU and wall seconds of the method's selection (warm-up, features, "
    "scoring, model loading)."
)


def comparisons_markdown(data: ReportData, figures: dict[str, str]) -> str:
    """The paired comparisons, the verdicts, the cost-quality figure, the learning rate and prepare checks."""
    if not data.comparisons:
        return ""
    parts = ["\n## Paired comparisons\n\n", COMPARISONS_TEXT, "\n\n"]
    parts += [f"- {v}\n" for v in verdicts(data)]
    for name, b in data.comparisons.items():
        parts.append(f"\n### {name}: {b['metric']} ({'higher' if b['higher_is_better'] else 'lower'} is better, ")
        parts.append(f"{b['n_eval']} examples)\n\n{markdown_table(comparison_table(data, name))}")
        for metric in b.get("secondary", {}):
            parts.append(f"\n{name}: {metric}\n\n{markdown_table(comparison_table(data, name, metric))}")
    if "cost_quality" in figures:
        parts.append(f"\n![Quality gain over random against selection cost]({figures['cost_quality']})\n")
    if data.lr_search is not None:
        parts.append(f"\n## Learning rate\n\n{markdown_table(lr_table(data))}")
    if data.prepare:
        parts.append(f"\n## Prepare steps\n\n{markdown_table(prepare_table(data))}")
    return "".join(parts)


def render_markdown(data: ReportData, figures: dict[str, str]) -> str:
    """The report as Markdown; `figures` maps figure names to the paths the images are linked at."""
    parts = [f"# gradsift bench: {data.title}\n\n", f"Created {data.created}.\n"]
    parts.append("\n## Machine\n\n")
    parts.append(markdown_table(Table(["", ""], [[k, v] for k, v in data.machine.items()], [False, False])))
    parts.append("\n## Scenario\n\n")
    settings = [[k, str(v)] for k, v in data.settings.items()]
    parts.append(markdown_table(Table(["", ""], settings, [False, False])))
    bench_rows = [
        [b.name, b.task, b.metric, "higher" if b.higher_is_better else "lower", fmt(b.n)] for b in data.benchmarks
    ]
    parts.append("\nBenchmarks:\n\n")
    parts.append(markdown_table(Table(["name", "task", "metric", "better", "n"], bench_rows, [False] * 4 + [True])))
    parts.append(comparisons_markdown(data, figures))
    parts.append("\n## Efficiency (SDF, PIR, distance from the reference line)\n\n")
    a, b = data.references
    parts.append(
        f"PIR is the mean over benchmarks of each metric relative to full-data training (inverted for losses); "
        f"efficiency is the signed distance above the line through {a} and {b} at the same budget.\n\n"
    )
    parts.append(markdown_table(efficiency_table(data)))
    for name, title in (("pir_vs_sdf", "PIR against SDF"), ("metric_vs_budget", "Metrics against budget")):
        if name in figures:
            parts.append(f"\n![{title}]({figures[name]})\n")
    parts.append("\n## Results\n\n")
    parts.append(markdown_table(results_table(data)))
    parts.append("\n## Feasibility\n\n")
    parts.append(markdown_table(feasibility_table(data)))
    parts.append("\n## Task balance of the selections\n\n")
    parts.append(markdown_table(task_share_table(data)))
    if "task_balance" in figures:
        parts.append(f"\n![Task balance]({figures['task_balance']})\n")
    if "score_distributions" in figures:
        parts.append(f"\n## Score distributions\n\n![Score distributions]({figures['score_distributions']})\n")
    parts.append("\n## Top and bottom examples\n")
    for method, (top, bottom) in extremes_tables(data).items():
        parts.append(f"\n### {method}: highest scores\n\n{markdown_table(top)}")
        parts.append(f"\n### {method}: lowest scores\n\n{markdown_table(bottom)}")
    parts.append("\n## Overlap between selections (Jaccard)\n\n")
    parts.append(markdown_table(overlap_table(data)))
    expected = data.overlap.expected_random
    if expected is not None:
        parts.append(f"\nTwo independent random selections of this size overlap {expected:.3f} on average.\n")
    if "overlap" in figures:
        parts.append(f"\n![Overlap]({figures['overlap']})\n")
    if data.unavailable or data.notes:
        parts.append("\n## Notes\n\n")
        for m, why in data.unavailable.items():
            parts.append(f"- method `{m}` was not run: {why}\n")
        for n in data.notes:
            parts.append(f"- {n}\n")
    return "".join(parts)
