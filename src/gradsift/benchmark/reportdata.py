"""A bench run as the report's data model (`gradsift.report.data.ReportData`), and the report files.

Everything the pages derive from the selections (task shares, Jaccard overlaps and the overlap two random
selections would have) is computed here with `gradsift.stats`, so the report package only formats and draws.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gradsift.atomic import write_bytes_atomic, write_text_atomic
from gradsift.benchmark.config import BenchConfig
from gradsift.benchmark.sets import Record
from gradsift.data.records import MCItem, Pair
from gradsift.machine import machine_info
from gradsift.report.data import (
    BASELINES,
    BenchmarkInfo,
    MethodSelection,
    Overlap,
    PoolItem,
    ReportData,
    TaskShares,
)
from gradsift.stats import expected_random_jaccard, jaccard_matrix, task_shares


def pool_item(r: Record) -> PoolItem:
    """A record as the report shows it: its last user turn and its response (both responses of a pair)."""
    if isinstance(r, Pair):
        prompt = next((m["content"] for m in reversed(r.prompt) if m["role"] == "user"), "")
        return PoolItem(r.id, r.task, prompt, f"chosen: {r.chosen}\nrejected: {r.rejected}")
    if isinstance(r, MCItem):
        return PoolItem(r.id, r.task, r.question, r.choices[int(r.answer)])
    prompt = next((m["content"] for m in reversed(r.prompt_messages) if m["role"] == "user"), "")
    return PoolItem(r.id, r.task, prompt, r.response)


def selection_summary(pool: Sequence[PoolItem], selections: Sequence[MethodSelection]) -> tuple[TaskShares, Overlap]:
    """Task shares of the pool and of each selection, and the selections' Jaccard overlaps.

    Args:
        pool: The pool's records [N].
        selections: The selections to compare [M].

    Returns:
        ``(task_shares, overlap)``: tasks by pool share (largest first, ties in pool order) with their share
        of the pool and of each selection; the [M, M] Jaccard matrix and the expected Jaccard index of two
        independent uniform selections of the largest selector budget.
    """
    labels = [p.task for p in pool]
    pool_shares = task_shares(labels, [])
    tasks = sorted(pool_shares, key=lambda t: pool_shares[t]["pool"], reverse=True)  # stable: ties keep pool order
    shares = {"pool": {t: pool_shares[t]["pool"] for t in tasks}}
    for s in selections:
        chosen = task_shares(labels, s.rows)
        shares[s.method] = {t: chosen[t]["selected"] for t in tasks}
    ks = [len(s.rows) for s in selections if s.method not in BASELINES]
    overlap = Overlap(
        methods=[s.method for s in selections],
        jaccard=jaccard_matrix([s.rows for s in selections]),
        expected_random=expected_random_jaccard(len(pool), max(ks)) if ks else None,
    )
    return TaskShares(tasks, shares), overlap


def collect_report_data(
    cfg: BenchConfig,
    *,
    sets: Mapping[str, Sequence[Record]],
    budgets: Sequence[tuple[str, int]],
    selections: Mapping[tuple[str, int, int], MethodSelection],
    table: Any,
    efficiency: list[dict[str, Any]],
    feasibility: list[dict[str, Any]],
    unavailable: Mapping[str, str],
    notes: Sequence[str],
) -> ReportData:
    """What the report of a finished run shows.

    Args:
        cfg: The bench's config.
        sets: The run's data sets by name (``pool``, ``targets``, ``heldout`` and the named sets).
        budgets: The budgets as ``(spec, count)``, smallest first.
        selections: Every selection by ``(method, count, seed)``; the report shows those of the largest budget
            and the first seed.
        table: The results table (`gradsift.benchmark.run.BenchResult.table`).
        efficiency: Efficiency rows.
        feasibility: Feasibility rows.
        unavailable: Methods skipped, with the reason.
        notes: Caveats found while computing the metrics.
    """
    k_max = budgets[-1][1]
    seed0 = cfg.seeds[0]
    shown = [s for (_, k, seed), s in selections.items() if k == k_max and seed == seed0]
    n_pool = len(sets["pool"])
    infos = []
    for b in cfg.benchmarks:
        n = len(sets[b.data])
        infos.append(
            BenchmarkInfo(b.name, b.kind.value, b.metric or "", bool(b.higher_is_better), min(n, b.limit or n))
        )
    settings = {
        "model": cfg.model if cfg.prepare is None else f"{cfg.model} after the prepare step",
        "kind": cfg.kind,
        "pool": n_pool,
        "targets": len(sets.get("targets", [])),
        "held-out targets": len(sets.get("heldout", [])),
        "budgets": ", ".join(f"{b} ({k})" for b, k in budgets),
        "seeds": ", ".join(map(str, cfg.seeds)) + f" (seeded: {', '.join(cfg.seeded_methods) or 'none'})",
        "methods": ", ".join(cfg.methods),
        "training": json.dumps(cfg.train, sort_keys=True) if cfg.train else "defaults",
        "references": " and ".join(cfg.references),
    }
    pool = [pool_item(r) for r in sets["pool"]]
    shares, overlap = selection_summary(pool, shown)
    return ReportData(
        title=cfg.name,
        created=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        machine=machine_info(),
        settings=settings,
        benchmarks=infos,
        table=table,
        efficiency=efficiency,
        feasibility=feasibility,
        pool=pool,
        selections=shown,
        task_shares=shares,
        overlap=overlap,
        unavailable=dict(unavailable),
        notes=list(notes),
        references=(cfg.references[0], cfg.references[1]),
    )


def write_report(data: ReportData, results: Path) -> None:
    """``report.html`` (self-contained) and ``report.md`` with its figures in ``figures/``."""
    from gradsift.report.html import render_html
    from gradsift.report.markdown import render_markdown
    from gradsift.report.plots import make_figures

    figures = make_figures(data)
    fig_dir = results / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    for name, png in figures.items():
        write_bytes_atomic(fig_dir / f"{name}.png", png)
    write_text_atomic(results / "report.html", render_html(data, figures))
    write_text_atomic(results / "report.md", render_markdown(data, {k: f"figures/{k}.png" for k in figures}))
