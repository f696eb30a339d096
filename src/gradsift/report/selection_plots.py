"""Figures of a selection report, as PNG bytes (matplotlib's object API on an Agg canvas, as `gradsift.report.plots`).

Histograms are computed over every candidate (their size does not grow with the pool); scatter plots draw at
most `MAX_POINTS` candidates per panel, a seeded uniform subsample, so the page stays small for any pool.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from gradsift.report.plots import draw_all, method_colours, png_bytes, shorten
from gradsift.report.selection_data import SelectionReport, Shares

MAX_POINTS = 2000
"""Candidates drawn per scatter panel."""
MAX_LABELS = 12
"""Label columns in a share heat map; rarer labels are summed into "other"."""
MAX_PAIRS = 6
"""Method pairs in the rank scatter (the first methods' pairs)."""
BINS = 40


def _colours(data: SelectionReport) -> dict[str, Any]:
    return method_colours([m.name for m in data.methods])


def score_distributions(data: SelectionReport) -> bytes | None:
    """Per method, the histogram of its plotted values, selected candidates stacked in colour, cuts as lines."""
    shown = [m for m in data.methods if np.isfinite(m.plotted).any()]
    if not shown:
        return None
    colours = _colours(data)
    ncols = min(3, len(shown))
    nrows = math.ceil(len(shown) / ncols)
    fig = Figure(figsize=(4.4 * ncols, 3.0 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    for ax, m in zip(axes, shown, strict=False):
        values = np.asarray(m.plotted, dtype=np.float64)
        ok = np.isfinite(values)
        chosen = np.zeros(len(values), dtype=bool)
        chosen[m.selected] = True
        # counts computed here and drawn as two filled step outlines (the selected stacked on the rest): two
        # artists per panel whatever the pool size
        bins = np.histogram_bin_edges(values[ok], bins=BINS)
        rest, _ = np.histogram(values[ok & ~chosen], bins)
        picked, _ = np.histogram(values[ok & chosen], bins)
        ax.stairs(rest + picked, bins, fill=True, color=colours[m.name], label=f"selected ({len(m.selected)})")
        ax.stairs(rest, bins, fill=True, color="0.75", label="not selected")
        for x, label in m.cuts:
            if math.isfinite(x):
                ax.axvline(x, color="black", ls="--", lw=1)
                ax.annotate(
                    label,
                    (x, 1),
                    xycoords=("data", "axes fraction"),
                    xytext=(3, -10),
                    textcoords="offset points",
                    fontsize=7,
                    rotation=90,
                    va="top",
                )
        ax.set_title(m.name, fontsize=10)
        ax.set_xlabel(m.plotted_label, fontsize=8)
        ax.set_ylabel("candidates", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7, loc="upper left")
    for ax in axes[len(shown) :]:
        ax.set_visible(False)
    return png_bytes(fig)


def share_heatmap(shares: Shares) -> bytes | None:
    """Shares of each label in the pool and in each selection, as an annotated heat map."""
    if not shares.labels or not shares.selections:
        return None
    names = ["pool", *shares.selections]
    rows = [shares.pool, *shares.selections.values()]
    labels = [shorten(t, 18) for t in shares.labels[:MAX_LABELS]]
    mat = np.array([r[:MAX_LABELS] for r in rows], dtype=np.float64)
    if len(shares.labels) > MAX_LABELS:
        mat = np.hstack([mat, np.array([[sum(r[MAX_LABELS:])] for r in rows])])
        labels.append("other")
    fig = Figure(figsize=(max(5.5, 0.85 * len(labels) + 2.5), 0.42 * len(names) + 1.9), layout="constrained")
    ax = fig.subplots()
    top = max(float(mat.max()), 1e-9)
    im = ax.imshow(mat, cmap="Blues", vmin=0, vmax=top, aspect="auto")
    ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    for i in range(mat.shape[0]):
        for j in range(mat.shape[1]):
            v = mat[i, j]
            ax.text(
                j, i, f"{v:.0%}", ha="center", va="center", fontsize=7, color="white" if v > 0.6 * top else "black"
            )
    ax.set_title(f"Share of each {shares.title}: pool and selections", fontsize=10)
    fig.colorbar(im, ax=ax, shrink=0.8, format=lambda x, _: f"{x:.0%}")
    return png_bytes(fig)


def lengths(data: SelectionReport) -> bytes | None:
    """Response-length distribution of the pool (grey) and of each selection (lines), as densities."""
    pool = np.asarray(data.lengths.pool, dtype=np.float64)
    if not len(pool) or not data.methods:
        return None
    colours = _colours(data)
    hi = max(float(np.percentile(pool, 99.5)), 1.0)
    bins = np.linspace(0, hi, BINS + 1).tolist()
    fig = Figure(figsize=(7.0, 3.4), layout="constrained")
    ax = fig.subplots()
    density, _ = np.histogram(np.clip(pool, 0, hi), bins, density=True)
    ax.stairs(density, bins, fill=True, color="0.8", label="pool")
    for m in data.methods:
        if len(m.selected):
            density, _ = np.histogram(np.clip(pool[m.selected], 0, hi), bins, density=True)
            ax.stairs(density, bins, lw=1.6, color=colours[m.name], label=m.name)
    ax.set_xlabel(f"response length ({data.lengths.unit}; the top 0.5% of the pool drawn at the right edge)")
    ax.set_ylabel("density")
    ax.legend(fontsize=7, ncols=2, loc="upper right")
    ax.set_title("Response length: pool and selections", fontsize=10)
    return png_bytes(fig)


def overlap(data: SelectionReport) -> bytes | None:
    """Jaccard overlap of the selections (left) and Spearman correlation of the scores (right)."""
    names = data.overlap.methods
    if len(names) < 2:
        return None
    size = 1.2 + 0.6 * len(names)
    fig = Figure(figsize=(2 * size + 2.5, size + 0.6), layout="constrained")
    for ax, (mat, title, lo) in zip(
        fig.subplots(1, 2),
        (
            (data.overlap.jaccard, "Jaccard overlap of the selections", 0.0),
            (data.spearman, "Spearman rank correlation of the scores", -1.0),
        ),
        strict=True,
    ):
        im = ax.imshow(np.nan_to_num(mat, nan=lo), cmap="viridis", vmin=lo, vmax=1)
        ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        for i in range(len(names)):
            for j in range(len(names)):
                v = mat[i, j]
                text = "-" if math.isnan(v) else f"{v:.2f}"
                # dark text on the light (high) end of viridis
                colour = "black" if v > (1 + lo) / 2 else "white"
                ax.text(j, i, text, ha="center", va="center", fontsize=7, color=colour)
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8)
    return png_bytes(fig)


def rank_scatter(data: SelectionReport) -> bytes | None:
    """Score percentile of one method against another's for up to `MAX_PAIRS` method pairs (pairs with the
    random baseline last), on a subsample of at most `MAX_POINTS` candidates; candidates either method selected
    in colour."""
    methods = [m for m in data.methods if np.isfinite(m.percentile).sum() >= 2]
    pairs = [(a, b) for i, a in enumerate(methods) for b in methods[i + 1 :]]
    # pairs with the random baseline last: its agreement with anything is chance
    pairs = sorted(pairs, key=lambda p: "random" in (p[0].name, p[1].name))[:MAX_PAIRS]
    if not pairs:
        return None
    n = data.n_pool
    rng = np.random.default_rng(0)
    sample = np.sort(rng.choice(n, size=min(n, MAX_POINTS), replace=False))
    ncols = min(3, len(pairs))
    nrows = math.ceil(len(pairs) / ncols)
    dot = float(np.clip(8000 / len(sample), 3, 16))  # marker area: small for a dense panel, visible for a sparse one
    fig = Figure(figsize=(3.6 * ncols, 3.4 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    for ax, (a, b) in zip(axes, pairs, strict=False):
        pa, pb = a.percentile[sample], b.percentile[sample]
        in_a = np.isin(sample, a.selected)
        in_b = np.isin(sample, b.selected)
        groups = (
            (~in_a & ~in_b, "0.75", "neither"),
            (in_a & ~in_b, "tab:blue", f"{a.name} only"),
            (~in_a & in_b, "tab:orange", f"{b.name} only"),
            (in_a & in_b, "tab:red", "both"),
        )
        for mask, colour, label in groups:
            if mask.any():
                ax.scatter(pa[mask], pb[mask], s=dot, color=colour, label=label, alpha=0.7, linewidths=0)
        ax.set_xlabel(f"{a.name} percentile", fontsize=8)
        ax.set_ylabel(f"{b.name} percentile", fontsize=8)
        ax.set_xlim(0, 100)
        ax.set_ylim(0, 100)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, markerscale=2, loc="upper left")
    for ax in axes[len(pairs) :]:
        ax.set_visible(False)
    fig.suptitle(f"Score percentiles, method against method ({len(sample)} of {n} candidates drawn)", fontsize=9)
    return png_bytes(fig)


def timings(data: SelectionReport) -> bytes | None:
    """Seconds per stage as horizontal bars (``total`` left out: it is their sum and the page states it)."""
    stages = [(k, v) for k, v in data.timings.items() if k != "total" and v > 0]
    if not stages:
        return None
    fig = Figure(figsize=(7.0, 0.35 * len(stages) + 1.2), layout="constrained")
    ax = fig.subplots()
    names = [k for k, _ in stages][::-1]
    secs = [v for _, v in stages][::-1]
    ax.barh(names, secs, color="tab:blue")
    for y, v in enumerate(secs):
        ax.annotate(f"{v:.3g} s", (v, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
    ax.set_xlabel("seconds")
    ax.tick_params(labelsize=8)
    ax.set_title("Time by stage", fontsize=10)
    return png_bytes(fig)


FIGURES = {
    "scores": score_distributions,
    "tasks": lambda d: share_heatmap(d.tasks),
    "sources": lambda d: share_heatmap(d.sources) if len(d.sources.labels) > 1 else None,
    "lengths": lengths,
    "overlap": overlap,
    "rank_scatter": rank_scatter,
    "timings": timings,
}
"""Figure name -> drawing function (None when the data has nothing to draw)."""


def make_figures(data: SelectionReport) -> dict[str, bytes]:
    """Every figure the data allows, as PNG bytes by name."""
    return draw_all(FIGURES, data)
