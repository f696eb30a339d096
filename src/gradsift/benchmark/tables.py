"""A bench's tables: PIR per row, paired comparisons per benchmark, efficiency per budget and method, and the
files they are written to.

PIR of a row is the mean over benchmarks of its primary metric relative to the mean of the ``full`` rows
(`gradsift.evaluation.selector_metrics.BenchmarkScore`, inverted for lower-is-better metrics). Efficiency
is computed per budget from each method's mean (SDF, PIR) over seeds: its signed distance from the line
through the two reference methods (methods.md section 5). The paired comparisons read every cell's
per-example evaluation results (`gradsift.benchmark.metrics`).
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gradsift.atomic import write_bytes_atomic, write_text_atomic
from gradsift.benchmark.config import BenchConfig
from gradsift.benchmark.metrics import Group, compare_groups, example_values
from gradsift.evaluation.selector_metrics import BenchmarkScore, MethodPoint, efficiency_table
from gradsift.report.data import BASELINES, SMOKE_PREFIX, BenchmarkInfo


def add_pir(table: Any, benchmarks: Sequence[BenchmarkInfo], notes: list[str]) -> Any:
    """Add ``pir.<benchmark>`` (ratio to the full-data row) and ``pir`` (their mean) columns.

    A benchmark whose ratio is undefined for a row (missing value, or a full-data score the ratio cannot divide
    by) is left out of that row's mean; the first such case per benchmark is added to `notes`.
    """
    table = table.copy()
    full = table[table["method"] == "full"]
    if full.empty:
        notes.append("no full-data row: PIR (relative to full data) is not computed")
        table["pir"] = float("nan")
        return table
    # the full-data reference of every ratio: the mean of the full rows (one per training seed)
    ref = full.mean(numeric_only=True)
    ratio_cols = []
    for b in benchmarks:
        col, pcol = b.column, f"pir.{b.name}"
        ratio_cols.append(pcol)
        ratios = []
        noted = False
        for _, r in table.iterrows():
            value = None
            sel, fv = r.get(col), ref.get(col)
            if sel is not None and fv is not None and not pd_isnan(sel) and not pd_isnan(fv):
                try:
                    value = BenchmarkScore(b.name, float(sel), float(fv), b.higher_is_better).ratio
                except ValueError as e:
                    if not noted:
                        notes.append(f"{b.name}: no PIR ratio ({e})")
                        noted = True
            ratios.append(float("nan") if value is None else value)
        table[pcol] = ratios
    table["pir"] = table[ratio_cols].mean(axis=1, skipna=True) if ratio_cols else float("nan")
    return table


def pd_isnan(x: Any) -> bool:
    """Whether `x` is a float NaN (how pandas gives a missing cell)."""
    return isinstance(x, float) and math.isnan(x)


def efficiency_rows(
    table: Any, benchmarks: Sequence[BenchmarkInfo], references: Sequence[str], notes: list[str]
) -> list[dict[str, Any]]:
    """Per budget: each method's mean SDF and PIR over seeds, its efficiency and rank (methods.md section 5).

    The reference line runs through the two `references` methods' points at the same budget (``full``: the
    full-data row, (1, 1) by definition).
    """
    out: list[dict[str, Any]] = []
    selectors = table[~table["method"].isin(BASELINES)]
    for budget in dict.fromkeys(selectors["budget"]):
        group = selectors[(selectors["budget"] == budget) & selectors["pir"].notna()]
        if group.empty:
            continue
        points, extra = [], []
        for method, g in group.groupby("method", sort=False):
            points.append(MethodPoint(str(method), float(g["sdf"].mean()), float(g["pir"].mean())))
            per = {f"pir.{b.name}": float(g[f"pir.{b.name}"].mean()) for b in benchmarks if f"pir.{b.name}" in g}
            extra.append({"pir_std": float(g["pir"].std(ddof=0)), "n_seeds": int(len(g)), **per})
        try:
            rows = efficiency_table(points, (references[0], references[1]))
        except ValueError as e:
            notes.append(f"budget {budget}: no efficiency ({e})")
            rows = [
                {"method": p.method, "sdf": p.sdf, "pir": p.pir, "efficiency": None, "efficiency_rank": None}
                for p in points
            ]
        for r, x in zip(rows, extra, strict=True):
            out.append({"budget": budget, **r, **x})
    return out


def json_safe(obj: Any) -> Any:
    """`obj` with NaN and infinities as None (JSON has no NaN) and numpy scalars as Python numbers."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def comparisons(
    out: Path,
    table: Any,
    cfg: BenchConfig,
    costs: dict[tuple[str, str], dict[str, float | None]],
    notes: list[str],
) -> dict[str, Any]:
    """Paired comparisons of every (method, budget) on each benchmark, from the cells' per-example results.

    Args:
        out: The bench's working directory (``cells/<cell>/eval/<benchmark>.json``).
        table: The results table (its ``cell`` column names each row's directory).
        cfg: The bench's config.
        costs: Selection cost of each (method, budget): ``wall_s`` and ``cpu_s``.
        notes: Caveats are appended here.

    Returns:
        ``{benchmark: {task, metric, higher_is_better, n_eval, methods, secondary}}``: ``methods`` is
        `gradsift.benchmark.metrics.compare_groups` of the primary metric, with each entry's selection cost
        (``select_wall_s``, ``select_cpu_s``); ``secondary`` holds the same for the benchmark's other
        per-example metrics (e.g. the mean margin beside preference accuracy).

    Raises:
        ValueError: Cells evaluated on different examples.
    """
    out_all: dict[str, Any] = {}
    cells = sorted(table.itertuples(index=False), key=lambda r: r.seed)
    for b in cfg.benchmarks:
        results: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for r in cells:
            path = out / "cells" / str(r.cell) / "eval" / f"{b.name}.json"
            if path.exists():
                results.setdefault((str(r.method), str(r.budget)), []).append(json.loads(path.read_text()))
        if not results:
            continue
        first = next(iter(results.values()))[0]
        secondary = [m for m in first["metrics"] if m != b.metric and m in METRIC_ORDER]
        entry: dict[str, Any] = {"task": b.kind.value, "metric": b.metric, "higher_is_better": b.higher_is_better}
        for metric in [str(b.metric), *secondary]:
            higher = bool(b.higher_is_better) if metric == b.metric else METRIC_ORDER[metric]
            got = _group_values(results, metric, cfg, b.name)
            if got is None:
                if metric == b.metric:
                    notes.append(f"{b.name}: {metric} is not a mean over examples, so it has no paired comparison")
                continue
            groups, n = got
            compared = compare_groups(
                groups, higher, label=f"{b.name}/{metric}", n_boot=cfg.bootstrap, seed=cfg.stats_seed
            )
            for method, by_budget in compared.items():
                for budget, e in by_budget.items():
                    cost = costs.get((method, budget), {})
                    e["select_wall_s"], e["select_cpu_s"] = cost.get("wall_s"), cost.get("cpu_s")
            if metric == b.metric:
                entry.update(n_eval=n, methods=compared, secondary={})
            elif "methods" in entry:
                entry["secondary"][metric] = {"higher_is_better": higher, "methods": compared}
        if "methods" in entry:
            out_all[b.name] = entry
    return out_all


def _group_values(
    results: dict[tuple[str, str], list[dict[str, Any]]], metric: str, cfg: BenchConfig, bench: str
) -> tuple[dict[Group, np.ndarray], int] | None:
    """Per-seed, per-example values [S, N] of each (method, budget) for `metric`, and N; None when the metric
    is not a mean over examples.

    Raises:
        ValueError: Groups evaluated on other examples than the first.
    """
    groups: dict[Group, np.ndarray] = {}
    ids: list[str] | None = None
    for (method, budget), rs in results.items():
        values = []
        for r in rs:
            got = example_values(r, metric)
            if got is None:
                return None
            if ids is None:
                ids = got[0]
            elif got[0] != ids:
                raise ValueError(f"{bench}: {method} at budget {budget} was evaluated on other examples")
            values.append(got[1])
        groups[Group(method, budget, cfg.base_method(method))] = np.stack(values)
    return groups, len(ids or [])


METRIC_ORDER = {"accuracy": True, "exact_match": True, "refusal_rate": True, "mean_margin": True, "mean_loss": False}
"""Secondary metrics compared beside a benchmark's primary one, with their direction."""


def comparison_rows(paired: dict[str, Any]) -> list[dict[str, Any]]:
    """The paired comparisons as flat rows (one per benchmark, metric, method and budget)."""
    rows = []
    for name, b in paired.items():
        metrics = {b["metric"]: (b["higher_is_better"], b["methods"])}
        metrics.update({m: (s["higher_is_better"], s["methods"]) for m, s in b.get("secondary", {}).items()})
        for metric, (higher, methods) in metrics.items():
            for method, by_budget in methods.items():
                for budget, e in by_budget.items():
                    row = {"benchmark": name, "metric": metric, "higher_is_better": higher, "method": method}
                    row.update(budget=budget, **{k: v for k, v in e.items() if not k.startswith("vs_")})
                    for ref in ("random", "full", "full_epoch", "embed"):
                        vs = e.get(f"vs_{ref}")
                        for k in ("diff", "ci95_low", "ci95_high", "verdict"):
                            row[f"vs_{ref}.{k}"] = vs[k] if vs else None
                    rows.append(row)
    return rows


def write_tables(
    results: Path,
    table: Any,
    paired: dict[str, Any],
    efficiency: list[dict[str, Any]],
    feasibility: list[dict[str, Any]],
) -> None:
    """``results.csv``/``results.parquet``, ``comparisons.csv``, ``efficiency.csv`` and ``feasibility.csv``,
    atomically."""
    import pandas as pd

    write_text_atomic(results / "results.csv", table.to_csv(index=False))
    write_text_atomic(results / "comparisons.csv", pd.DataFrame(comparison_rows(paired)).to_csv(index=False))
    buf = io.BytesIO()
    table.to_parquet(buf, index=False)
    write_bytes_atomic(results / "results.parquet", buf.getvalue())
    write_text_atomic(results / "efficiency.csv", pd.DataFrame(efficiency).to_csv(index=False))
    write_text_atomic(results / "feasibility.csv", pd.DataFrame(feasibility).to_csv(index=False))


#: The protocol's floor for a comparison that can tell methods apart (issue 15): evaluation examples per
#: benchmark (generation-scored ones: prompts), training seeds, optimizer steps per cell.
MIN_EVAL, MIN_EVAL_GENERATED, MIN_SEEDS, MIN_STEPS = 300, 200, 3, 60
GENERATED = ("refusal_rate", "exact_match")


def smoke_reasons(paired: dict[str, Any], seeds: int, max_steps: int | None) -> list[str]:
    """Why a comparison is below the protocol's power (empty when it is not): too few evaluation examples per
    benchmark (`paired` as `comparisons` returns it), seeds or optimizer steps."""
    reasons = []
    for name, entry in paired.items():
        floor = MIN_EVAL_GENERATED if str(entry.get("metric")) in GENERATED else MIN_EVAL
        if int(entry.get("n_eval") or 0) < floor:
            reasons.append(f"{name} has {entry.get('n_eval')} evaluation examples (< {floor})")
    if seeds < MIN_SEEDS:
        reasons.append(f"{seeds} seed{'s' if seeds != 1 else ''} (< {MIN_SEEDS})")
    if max_steps is not None and max_steps < MIN_STEPS:
        reasons.append(f"{max_steps} optimizer steps per cell (< {MIN_STEPS})")
    return reasons


def smoke_note(reasons: list[str]) -> str | None:
    """The report's first verdict for an underpowered run, or None."""
    if not reasons:
        return None
    return (
        f"{SMOKE_PREFIX}: " + "; ".join(reasons) + f". A comparison that can separate methods from noise "
        f"needs >= {MIN_EVAL} evaluation examples per benchmark (>= {MIN_EVAL_GENERATED} prompts where the metric "
        f"is generated), >= {MIN_SEEDS} seeds and >= {MIN_STEPS} steps."
    )
