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
    selections: Mapping[tuple[str, str, int], MethodSelection],
    table: Any,
    comparisons: dict[str, Any],
    efficiency: list[dict[str, Any]],
    feasibility: list[dict[str, Any]],
    lr_search: dict[str, Any] | None,
    prepare: dict[str, Any],
    unavailable: Mapping[str, str],
    notes: Sequence[str],
) -> ReportData:
    """What the report of a finished run shows.

    Args:
        cfg: The bench's config.
        sets: The run's data sets by name (``pool``, ``targets``, ``heldout`` and the named sets).
        budgets: The budgets as ``(label, count)``; the report shows the selections of the largest count.
        selections: Every selection by ``(method, budget label, selection seed)``; the report shows those of
            the largest budget and the first seed.
        table: The results table (`gradsift.benchmark.run.BenchResult.table`).
        comparisons: Paired comparisons per benchmark (`gradsift.benchmark.tables.comparisons`).
        efficiency: Efficiency rows.
        feasibility: Feasibility rows.
        lr_search: The learning-rate search, or None.
        prepare: The prepare steps' records.
        unavailable: Methods skipped, with the reason.
        notes: Caveats found while computing the metrics.
    """
    seed0 = cfg.seeds[0]
    top = max(budgets, key=lambda b: b[1])[0] if budgets else None
    shown = [s for (_, label, seed), s in selections.items() if label == top and seed == seed0]
    n_pool = len(sets["pool"])
    infos = []
    for b in cfg.benchmarks:
        n = len(sets[b.data])
        infos.append(
            BenchmarkInfo(b.name, b.kind.value, b.metric or "", bool(b.higher_is_better), min(n, b.limit or n))
        )
    train = dict(cfg.train)
    if lr_search is not None:
        train["lr"] = f"{lr_search['chosen']:g} (chosen from {', '.join(f'{x:g}' for x in lr_search['grid'])})"
    seeded = ", ".join(cfg.seeded_methods) or "none"
    settings = {
        "model": cfg.model if cfg.prepare is None else f"{cfg.model} after the prepare steps",
        "kind": cfg.kind,
        "pool": n_pool,
        "targets": len(sets.get("targets", [])),
        "held-out targets": len(sets.get("heldout", [])),
        "budgets": ", ".join(f"{b} ({k})" for b, k in budgets),
        "seeds": ", ".join(map(str, cfg.seeds)) + f" (every method trains with each; selection seeded: {seeded})",
        "methods": ", ".join(cfg.methods),
        "variants": ", ".join(f"{k}: {v.method} {json.dumps(v.options)}" for k, v in cfg.variants.items()) or "none",
        "training": json.dumps(train, sort_keys=True) if train else "defaults",
        "selection cache": "one per method (costs are standalone)"
        if cfg.select_cache == "method"
        else "shared (a step reused from another method is charged what it cost when computed: costs are stand-alone)",
        "bootstrap": f"{cfg.bootstrap} replicates over examples and seeds (seed {cfg.stats_seed})",
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
        comparisons=comparisons,
        lr_search=lr_search,
        prepare=dict(prepare),
    )


def write_run_md(path: Path, data: ReportData, sittings: Sequence[dict[str, Any]]) -> None:
    """``RUN.md``: how the results were made: command, machine, each sitting's dates, wall and CPU time,
    the learning-rate search and the prepare checks. A block the user wrote into an earlier ``RUN.md`` between
    the lines ``<!-- notes -->`` and ``<!-- /notes -->`` is kept, under the title."""
    m = data.machine
    kept = _kept_notes(path)
    wall = sum(float(s["wall_s"]) for s in sittings)
    cpu = sum(float(s["cpu_s"]) for s in sittings)
    commands = list(dict.fromkeys(str(s.get("command") or "gradsift.bench(config) from Python") for s in sittings))
    lines = [
        f"# How this run was made: {data.title}",
        "",
        *([kept, ""] if kept else []),
        "- Command: " + "; then ".join(f"`{c}`" for c in commands),
        f"- Machine: {m.get('processor', '?')}, {m.get('cpus', '?')} CPUs, {m.get('memory', '?')}, "
        f"GPU: {m.get('gpu', '?')}; torch {m.get('torch', '?')}, gradsift {m.get('gradsift', '?')}.",
        f"- Dates: {sittings[0]['start']} to {sittings[-1]['end']} ({len(sittings)} sitting(s)).",
        f"- Wall time {wall / 60:.1f} min, CPU time {cpu / 60:.1f} min (this process and its workers; a sitting "
        "that only read back finished cells is short; one marked stopped was killed, and counts up to its last "
        "30-second record).",
        "",
        "| start | end | wall min | CPU min | workers |",
        "| --- | --- | ---: | ---: | ---: |",
        *(
            f"| {s['start']} | {s['end']}{' (stopped)' if s.get('stopped') else ''}"
            f"{' (' + str(s['note']) + ')' if s.get('note') else ''} | {s['wall_s'] / 60:.1f} | "
            f"{s['cpu_s'] / 60:.1f} | {s['workers']} |"
            for s in sittings
        ),
    ]
    lr = data.lr_search
    if lr is not None:
        better = "higher" if lr["higher_is_better"] else "lower"
        lines += [
            "",
            f"## Learning rate: {lr['chosen']:g}",
            "",
            f"Chosen once on random selections (seed {lr['seed']}) at the budgets {', '.join(lr['budgets'])}: "
            f"{lr['metric']} of benchmark {lr['benchmark']} on set {lr['data']} ({better} is better), mean over "
            "budgets.",
            "",
            "| lr | " + " | ".join(lr["budgets"]) + " | mean |",
            "| ---: | " + " | ".join("---:" for _ in lr["budgets"]) + " | ---: |",
            *(
                f"| {rate} | " + " | ".join(f"{v[b]:.4g}" for b in lr["budgets"]) + f" | {v['mean']:.4g} |"
                for rate, v in lr["values"].items()
            ),
        ]
    for name, step in data.prepare.items():
        until = step.get("until")
        lines += [
            "",
            f"## Prepare step {name}",
            "",
            f"- {step['n_train']} training examples, {step['rounds']} round(s)"
            + (
                f", {step['seconds'] / 60:.1f} min of wall time in the sitting that finished it (a step kept from an "
                "earlier run is not in the sittings above)."
                if step.get("seconds") is not None
                else "."
            ),
        ]
        if until is not None:
            checks = ", ".join(f"{v:.3f}" for v in step["checks"])
            bound = f"{'>=' if until['at_least'] is not None else '<='} {until['at_least'] or until['at_most']}"
            lines.append(
                f"- {until['metric']} on set {until['data']} before and after each round: {checks} "
                f"(target {bound}: {'reached' if step['met'] else 'NOT reached'})."
            )
    write_text_atomic(path, "\n".join(lines) + "\n")


NOTES_START, NOTES_END = "<!-- notes -->", "<!-- /notes -->"


def _kept_notes(path: Path) -> str | None:
    """The hand-written block of an existing ``RUN.md``, markers included, or None."""
    try:
        text = path.read_text()
    except OSError:
        return None
    start, end = text.find(NOTES_START), text.find(NOTES_END)
    if start < 0 or end < start:
        return None
    return text[start : end + len(NOTES_END)]


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
