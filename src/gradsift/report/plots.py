"""Figures of a bench report, as PNG bytes.

Drawn with matplotlib's object API on an Agg canvas (no pyplot, no global backend switch, no display needed),
so the report can embed them as data URIs and open offline. Each method keeps one colour in every figure.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from gradsift.report.data import BASELINES, ReportData

DPI = 110
MAX_TASKS = 12
"""Task columns in the balance figure; rarer tasks are summed into "other"."""


def method_colours(methods: list[str]) -> dict[str, Any]:
    """A fixed colour per method (matplotlib's tab10/tab20 order), baselines in greys."""
    from matplotlib import colormaps

    palette = colormaps["tab10" if len(methods) <= 10 else "tab20"]
    colours: dict[str, Any] = {
        "full": "black",
        "full-epoch": "0.2",
        "base": "0.55",
        "original": "0.35",
        "aligned": "0.45",
    }
    k = 0
    for m in methods:
        if m not in colours:
            colours[m] = palette(k % palette.N)
            k += 1
    return colours


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG bytes (no metadata, so equal figures give equal bytes)."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _methods(data: ReportData) -> list[str]:
    seen = list(dict.fromkeys(str(m) for m in data.table["method"])) if len(data.table) else []
    return seen + [s.method for s in data.selections if s.method not in seen]


def pir_vs_sdf(data: ReportData) -> bytes | None:
    """PIR against SDF for every (method, budget), with each budget's reference line and the full-data point."""
    rows = [r for r in data.efficiency if _finite(r.get("pir")) and _finite(r.get("sdf"))]
    if not rows:
        return None
    colours = method_colours(_methods(data))
    fig = Figure(figsize=(7.5, 5.0), layout="constrained")
    ax = fig.subplots()
    ref_a, ref_b = data.references
    budgets = list(dict.fromkeys(r["budget"] for r in rows))
    for budget in budgets:
        pts = {r["method"]: (r["sdf"], r["pir"]) for r in rows if r["budget"] == budget}
        a = pts.get(ref_a, (1.0, 1.0) if ref_a == "full" else None)
        b = pts.get(ref_b, (1.0, 1.0) if ref_b == "full" else None)
        if a is not None and b is not None and abs(a[0] - b[0]) > 1e-12:
            slope = (b[1] - a[1]) / (b[0] - a[0])
            xs = np.array([0.0, 1.05])
            ax.plot(xs, a[1] + slope * (xs - a[0]), ls="--", lw=1, color="0.6", zorder=1)
    labelled: set[str] = set()
    for r in rows:
        m = r["method"]
        err = r.get("pir_std") if r.get("n_seeds", 1) > 1 else None
        ax.errorbar(
            r["sdf"],
            r["pir"],
            yerr=err if _finite(err) else None,
            fmt="o",
            ms=7,
            color=colours.get(m),
            capsize=3,
            label=m if m not in labelled else None,
            zorder=3,
        )
        labelled.add(m)
        ax.annotate(str(r["budget"]), (r["sdf"], r["pir"]), xytext=(5, 4), textcoords="offset points", fontsize=7)
    ax.plot([1.0], [1.0], marker="*", ms=14, color="black", ls="none", label="full data", zorder=4)
    base = data.table[data.table["method"] == "base"] if len(data.table) else data.table
    if len(base) and "pir" in base and _finite(base["pir"].iloc[0]):
        ax.axhline(float(base["pir"].iloc[0]), color="0.55", ls=":", lw=1.2, label="untrained model")
    ax.set_xlim(0, 1.05)
    _flat_safe(ax)
    ax.xaxis.set_major_formatter(lambda x, _: f"{x:.0%}")
    ax.set_xlabel("SDF (fraction of the pool selected)")
    ax.set_ylabel("PIR (mean ratio to full-data training)")
    ax.set_title(f"Efficiency: dashed = line through {ref_a} and {ref_b} at each budget")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best", ncols=2)
    return png_bytes(fig)


def metric_vs_budget(data: ReportData) -> bytes | None:
    """Each benchmark's primary metric against SDF per method (mean over seeds, min-max bars), baselines as lines."""
    table = data.table
    benches = [b for b in data.benchmarks if len(table) and b.column in table and table[b.column].notna().any()]
    if not benches:
        return None
    colours = method_colours(_methods(data))
    ncols = min(2, len(benches))
    nrows = math.ceil(len(benches) / ncols)
    fig = Figure(figsize=(6.0 * ncols, 3.8 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    selectors = table[~table["method"].isin(BASELINES)]
    for ax, b in zip(axes, benches, strict=False):
        for m, g in selectors.groupby("method", sort=False):
            agg = g.groupby("k").agg(
                sdf=("sdf", "mean"), mean=(b.column, "mean"), lo=(b.column, "min"), hi=(b.column, "max")
            )
            agg = agg.dropna(subset=["mean"])
            if agg.empty:
                continue
            # equal seeds' mean can round a hair outside [min, max]; matplotlib refuses negative bars
            yerr = np.clip(np.vstack([agg["mean"] - agg["lo"], agg["hi"] - agg["mean"]]), 0.0, None)
            ax.errorbar(agg["sdf"], agg["mean"], yerr=yerr, marker="o", ms=5, capsize=3, color=colours.get(m), label=m)
        for name, style in (("full", "--"), ("full-epoch", (0, (5, 1))), ("base", ":"), ("original", "-.")):
            ref = table[table["method"] == name]
            if len(ref) and _finite(ref[b.column].mean()):
                level = float(ref[b.column].mean())  # mean over the baseline's training seeds
                ax.axhline(level, ls=style, color=colours[name], lw=1.2, label=name)
                if name == "full":
                    ax.plot([1.0], [level], marker="*", ms=11, color="black", ls="none")
        arrow = "higher is better" if b.higher_is_better else "lower is better"
        ax.set_title(f"{b.name}: {b.metric} ({arrow})", fontsize=10)
        ax.set_xlim(0, 1.05)
        _flat_safe(ax)
        ax.xaxis.set_major_formatter(lambda x, _: f"{x:.0%}")
        ax.set_xlabel("SDF (fraction of the pool selected)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    for ax in axes[len(benches) :]:
        ax.set_visible(False)
    return png_bytes(fig)


def cost_quality(data: ReportData) -> bytes | None:
    """Per benchmark: each (method, budget)'s gain over random (its paired difference, oriented so that up is
    better, with the 95% interval) against its selection cost (CPU seconds where every point has them, else
    wall seconds; log scale). Random sits at 0."""
    benches = []
    for name, b in data.comparisons.items():
        points = [
            (m, budget, e)
            for m, by in b["methods"].items()
            for budget, e in by.items()
            if m not in BASELINES and (e.get("vs_random") or m == "random") and _finite(e.get("select_wall_s"))
        ]
        if points:
            benches.append((name, b, points))
    if not benches:
        return None
    colours = method_colours(_methods(data))
    budgets = list(dict.fromkeys(budget for _, _, pts in benches for _, budget, _ in pts))
    markers = dict(zip(budgets, "osD^vP*Xh", strict=False))
    ncols = min(2, len(benches))
    nrows = math.ceil(len(benches) / ncols)
    fig = Figure(figsize=(6.2 * ncols, 4.0 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    for ax, (name, b, points) in zip(axes, benches, strict=False):
        cpu = all(_finite(e.get("select_cpu_s")) for _, _, e in points)
        sign = 1.0 if b["higher_is_better"] else -1.0
        labelled: set[str] = set()
        ax.set_xscale("log")
        xs = [max(float(e["select_cpu_s"] if cpu else e["select_wall_s"]), 1e-2) for _, _, e in points]
        ax.set_xlim(min(xs) / 2, max(xs) * 2)  # a log axis: room on both sides for the markers and bars
        for (m, budget, e), x in zip(points, xs, strict=True):
            vs = e.get("vs_random")
            if vs is None:
                y, err = 0.0, None
            else:
                lo, hi = sorted((sign * vs["ci95_low"], sign * vs["ci95_high"]))
                y = sign * vs["diff"]
                err = [[max(y - lo, 0.0)], [max(hi - y, 0.0)]]  # a bootstrap interval need not hold the mean
            ax.errorbar(
                x,
                y,
                yerr=err,
                fmt=markers.get(budget, "o"),
                ms=7,
                capsize=3,
                color=colours.get(m),
                label=m if m not in labelled else None,
            )
            labelled.add(m)
        ax.axhline(0.0, color="0.5", lw=1, ls="--")
        ax.set_xlabel(f"selection cost ({'CPU' if cpu else 'wall'} seconds, log scale)")
        ax.set_ylabel(f"gain over random ({'+' if sign > 0 else '-'}{b['metric']})")
        shown = ", ".join(f"{markers.get(x, 'o')} = {x}" for x in budgets)
        ax.set_title(f"{name}: {b['metric']} (markers by budget: {shown})", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    for ax in axes[len(benches) :]:
        ax.set_visible(False)
    return png_bytes(fig)


def task_balance(data: ReportData) -> bytes | None:
    """Heat map of task shares: the pool's and each selection's, with the share written in each cell."""
    if not data.selections or not data.pool:
        return None
    tasks, shares = data.task_shares.tasks, data.task_shares.shares
    shown = tasks[:MAX_TASKS]
    names = list(shares)
    mat = np.array([[shares[n].get(t, 0.0) for t in shown] for n in names])
    if len(tasks) > MAX_TASKS:
        rest = np.array([[sum(shares[n].get(t, 0.0) for t in tasks[MAX_TASKS:])] for n in names])
        mat = np.hstack([mat, rest])
        shown = [*shown, "other"]
    fig = Figure(figsize=(max(6.0, 0.9 * len(shown) + 2.5), 0.45 * len(names) + 1.8), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(mat, cmap="Blues", vmin=0, vmax=max(float(mat.max()), 1e-9), aspect="auto")
    ax.set_xticks(range(len(shown)), [shorten(t, 18) for t in shown], rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    for i in range(mat.shape[0]):
        for j in range(mat.shape[1]):
            v = mat[i, j]
            ax.text(
                j,
                i,
                f"{v:.0%}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if v > 0.6 * mat.max() else "black",
            )
    ax.set_title("Task shares: pool and each selection (largest budget, first seed)", fontsize=10)
    fig.colorbar(im, ax=ax, shrink=0.8, format=lambda x, _: f"{x:.0%}")
    return png_bytes(fig)


def score_distributions(data: ReportData) -> bytes | None:
    """Histogram of each method's scores over the pool, the selected rows stacked in colour."""
    scored = [
        (s, np.asarray(s.scores, dtype=np.float64))
        for s in data.selections
        if s.scores is not None and np.isfinite(s.scores).any()
    ]
    if not scored:
        return None
    colours = method_colours(_methods(data))
    ncols = min(3, len(scored))
    nrows = math.ceil(len(scored) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 2.9 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    for ax, (s, scores) in zip(axes, scored, strict=False):
        mask = np.zeros(len(scores), dtype=bool)
        mask[s.rows] = True
        ok = np.isfinite(scores)
        bins = np.histogram_bin_edges(scores[ok], bins=min(30, max(5, int(ok.sum() ** 0.5) * 2)))
        ax.hist(
            [scores[ok & ~mask], scores[ok & mask]],
            bins=bins,
            stacked=True,
            color=["0.75", colours.get(s.method)],
            label=["not selected", "selected"],
        )
        ax.set_title(f"{s.method} ({len(s.rows)} selected)", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    for ax in axes[len(scored) :]:
        ax.set_visible(False)
    return png_bytes(fig)


def overlap(data: ReportData) -> bytes | None:
    """Jaccard overlap of the methods' selections as an annotated heat map."""
    names, mat = data.overlap.methods, data.overlap.jaccard
    if len(names) < 2:
        return None
    size = 1.0 + 0.65 * len(names)
    fig = Figure(figsize=(size + 1.5, size), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(mat, cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    for i in range(len(names)):
        for j in range(len(names)):
            v = mat[i, j]
            ax.text(
                j,
                i,
                "-" if math.isnan(v) else f"{v:.2f}",
                ha="center",
                va="center",
                fontsize=7,
                color="black" if v > 0.6 else "white",
            )
    ax.set_title("Jaccard overlap of the selections", fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8)
    return png_bytes(fig)


FIGURES = {
    "pir_vs_sdf": pir_vs_sdf,
    "metric_vs_budget": metric_vs_budget,
    "cost_quality": cost_quality,
    "task_balance": task_balance,
    "score_distributions": score_distributions,
    "overlap": overlap,
}
"""Figure name -> drawing function (None when the data has nothing to draw)."""


def draw_all(figures: Mapping[str, Callable[[Any], bytes | None]], data: Any) -> dict[str, bytes]:
    """Every figure of `figures` the data allows, as PNG bytes by name (a drawing function returns None when
    the data has nothing to draw)."""
    out = {}
    for name, draw in figures.items():
        png = draw(data)
        if png is not None:
            out[name] = png
    return out


def make_figures(data: ReportData) -> dict[str, bytes]:
    """Every figure the data allows, as PNG bytes by name."""
    return draw_all(FIGURES, data)


def _flat_safe(ax: Any) -> None:
    """Readable y ticks: no offset notation, and a visible range when every value is (nearly) the same."""
    lo, hi = ax.get_ylim()
    scale = max(abs(lo), abs(hi), 1.0)
    if hi - lo < 1e-6 * scale:
        ax.set_ylim(lo - 0.05 * scale, hi + 0.05 * scale)
    ax.ticklabel_format(axis="y", useOffset=False)


def _finite(x: Any) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def shorten(text: str, n: int) -> str:
    """`text` cut to `n` characters with an ellipsis."""
    return text if len(text) <= n else text[: n - 1] + "…"
