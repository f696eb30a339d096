"""A bench's tables: PIR per row, efficiency per budget and method, and the files they are written to.

PIR of a row is the mean over benchmarks of its primary metric relative to the ``full`` row's
(`gradsift.evaluation.selector_metrics.BenchmarkScore`, inverted for lower-is-better metrics). Efficiency
is computed per budget from each method's mean (SDF, PIR) over seeds: its signed distance from the line
through the two reference methods (methods.md section 5).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gradsift.atomic import write_bytes_atomic, write_text_atomic
from gradsift.evaluation.selector_metrics import BenchmarkScore, MethodPoint, efficiency_table
from gradsift.report.data import BASELINES, BenchmarkInfo


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
    ref = full.iloc[0]
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


def write_tables(
    results: Path, table: Any, efficiency: list[dict[str, Any]], feasibility: list[dict[str, Any]]
) -> None:
    """``results.csv``/``results.parquet``, ``efficiency.csv`` and ``feasibility.csv``, atomically."""
    import pandas as pd

    write_text_atomic(results / "results.csv", table.to_csv(index=False))
    buf = io.BytesIO()
    table.to_parquet(buf, index=False)
    write_bytes_atomic(results / "results.parquet", buf.getvalue())
    write_text_atomic(results / "efficiency.csv", pd.DataFrame(efficiency).to_csv(index=False))
    write_text_atomic(results / "feasibility.csv", pd.DataFrame(feasibility).to_csv(index=False))
