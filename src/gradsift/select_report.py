"""A selection run as the selection report's data model, and its ``report.html``.

`write_report` builds the page from what a run leaves in its directory (``scores.parquet``) plus the run's
config (``config.json``'s content) and its pool and targets; `gradsift.pipeline` calls it with the records
it has in memory, `rebuild_report` (``gradsift report RUN_DIR``) reads them again from the paths
``config.json`` names, after checking their fingerprints. Everything the page derives (shares, overlaps,
rank correlations, the examples shown and why) is computed here; `gradsift.report` only formats and draws.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gradsift.atomic import write_text_atomic
from gradsift.data.load import load_examples, load_pairs
from gradsift.data.records import Example, Kind, Pair, fingerprint
from gradsift.report.data import Overlap, PoolItem
from gradsift.report.markdown import truncate
from gradsift.report.selection import render_selection_html
from gradsift.report.selection_data import Helped, Lengths, MethodView, SelectionReport, Shares, Shown
from gradsift.report.selection_plots import make_figures
from gradsift.stats import average_ranks, expected_random_jaccard, jaccard_matrix, spearman

REPORT = "report.html"
N_TOP = 10
N_BOTTOM = 5
BAND_METHODS = {"tif": ["if"], "lossdiff": ["lossdiff"], "irm": ["irm"], "fusion": ["lossdiff", "irm"]}
"""Band methods and the columns their bands are taken on (`gradsift.recipes.preference`)."""
LABELS = {"if": "IF", "lossdiff": "LossDiff", "irm": "IRM"}
Columns = dict[str, np.ndarray]
"""``scores.parquet`` as column name -> values [N] (strings as objects, None where missing)."""


def pool_item(r: Example | Pair) -> PoolItem:
    """A record as the report shows it: its last user turn (earlier turns counted) and its response; a pair's
    response holds both answers."""
    turns = r.prompt if isinstance(r, Pair) else r.prompt_messages
    user = next((m["content"] for m in reversed(turns) if m["role"] == "user"), "")
    earlier = len(turns) - 1 if user else len(turns)
    prompt = f"[{earlier} earlier turns] {user}" if earlier > 0 else user
    if isinstance(r, Pair):
        return PoolItem(r.id, r.task, prompt, f"chosen: {r.chosen}\nrejected: {r.rejected}")
    return PoolItem(r.id, r.task, prompt, r.response)


def _response_length(r: Example | Pair) -> int:
    return len(r.chosen if isinstance(r, Pair) else r.response)


def _shares(title: str, labels: Sequence[str], selections: dict[str, np.ndarray]) -> Shares:
    pool = Counter(labels)
    order = sorted(pool, key=lambda t: -pool[t])  # stable: ties keep first appearance
    n = max(len(labels), 1)
    per_method = {}
    for m, rows in selections.items():
        counts = Counter(labels[i] for i in rows)
        per_method[m] = [counts.get(t, 0) / max(len(rows), 1) for t in order]
    return Shares(title, order, [pool[t] / n for t in order], per_method, [pool[t] for t in order])


def _quantiles(values: np.ndarray) -> list[float]:
    if not len(values):
        return [float("nan")] * 5
    return [float(q) for q in np.percentile(values, [0, 25, 50, 75, 100])]


def _order(method: str, info: dict[str, Any], n_selected: int) -> str:
    """How a method's selection was made, in one sentence."""
    if method == "bids":
        return (
            "BIDS's iterative pick: each step the candidate whose influence on some target (column z-scored "
            "unless bids_normalize=false) most exceeds the selection's mean influence on it"
        )
    band = info.get("band")
    if method in BAND_METHODS and band and info.get("mode") == "band":
        cols = " and ".join(LABELS.get(c, c) for c in BAND_METHODS[method])
        order = "centre first" if info.get("order") == "centre" else "highest first"
        return f"the {_num(band['lo'])}-{_num(band['hi'])} percentile band of {cols} ({order})"
    return f"the {n_selected} highest scores"


def _num(x: float) -> str:
    return f"{x:g}"


def method_view(
    method: str,
    table: Columns,
    info: dict[str, Any],
    records: Sequence[Example | Pair],
    target_text: dict[str, str],
) -> MethodView:
    """One method's part of the report, from its ``scores.parquet`` columns and ``config.json`` facts."""
    score = np.asarray(table[f"score_{method}"], dtype=np.float64)
    rank = table[f"rank_{method}"]
    chosen = np.flatnonzero(rank >= 0)
    selected = chosen[np.argsort(rank[chosen], kind="stable")]
    band_cols = [c for c in BAND_METHODS.get(method, []) if f"{method}_pct_{c}" in table]
    in_band_col = table.get(f"{method}_in_band") if method == "fusion" else None
    if band_cols and in_band_col is None:
        in_band_col = table.get(f"{method}_in_band_{band_cols[0]}")
    plotted, label, cuts = score, "score", []
    if band_cols and info.get("mode") == "band":
        first = band_cols[0]
        plotted = np.asarray(table[f"{method}_{first}"], dtype=np.float64)
        label = LABELS.get(first, first)
        limits = info.get("band", {}).get("limits", {}).get(first)
        if limits:
            band = info["band"]
            cuts = [(float(limits[0]), f"{_num(band['lo'])}th pct"), (float(limits[1]), f"{_num(band['hi'])}th pct")]
    elif method != "bids" and len(selected):
        picked = score[selected]
        picked = picked[np.isfinite(picked)]
        if len(picked):
            cuts = [(float(picked.min()), "cut")]
    helps_k = 0
    while f"{method}_help_{helps_k + 1}_id" in table:
        helps_k += 1
    help_ids = [table[f"{method}_help_{j + 1}_id"] for j in range(helps_k)]
    help_values = [table[f"{method}_help_{j + 1}_value"] for j in range(helps_k)]
    pct_cols = {LABELS.get(c, c): table[f"{method}_pct_{c}"] for c in band_cols}

    def shown(row: int) -> Shown:
        helps = [
            Helped(str(ids[row]), float(vals[row]), target_text.get(str(ids[row]), ""))
            for ids, vals in zip(help_ids, help_values, strict=True)
            if ids[row] is not None
        ]
        return Shown(
            item=pool_item(records[row]),
            row=int(row),
            rank=int(rank[row]) if rank[row] >= 0 else None,
            score=float(score[row]),
            value=float(plotted[row]) if plotted is not score else float("nan"),
            helps=helps,
            band={name: float(v[row]) for name, v in pct_cols.items()},
            in_band=bool(in_band_col[row]) if in_band_col is not None else None,
        )

    ok = np.flatnonzero(np.isfinite(plotted))
    lowest = ok[np.argsort(plotted[ok], kind="stable")][:N_BOTTOM]
    why = "targets it helps most (influence)" if helps_k else "position in the band" if pct_cols else ""
    return MethodView(
        name=method,
        selected=selected,
        score=score,
        plotted=plotted,
        plotted_label=label,
        percentile=_percentiles(plotted),
        cuts=cuts,
        order=_order(method, info, len(selected)),
        top=[shown(int(r)) for r in selected[:N_TOP]],
        bottom=[shown(int(r)) for r in lowest],
        why=why,
        info=info,
    )


def build_report(
    run_dir: str | Path,
    config: dict[str, Any],
    records: Sequence[Example | Pair],
    targets: Sequence[Example] = (),
    notes: Sequence[str] = (),
) -> SelectionReport:
    """The selection report's data for a run.

    Args:
        run_dir: The run's directory, holding its ``scores.parquet``.
        config: The run's ``config.json`` content.
        records: The pool, in the run's row order [N].
        targets: The targets, for the text of the targets a candidate helps (may be empty).
        notes: Caveats to show.

    Returns:
        The report's data.

    Raises:
        ValueError: ``scores.parquet`` does not have one row per record.
    """
    import pyarrow.parquet as pq

    run_dir = Path(run_dir)
    # as config.json holds it (sorted keys), so a page made during the run and one rebuilt from the file agree
    config = json.loads(json.dumps(config, sort_keys=True, default=str))
    parquet = pq.read_table(run_dir / "scores.parquet")
    if parquet.num_rows != len(records):
        raise ValueError(
            f"{run_dir / 'scores.parquet'} has {parquet.num_rows} rows but the pool has {len(records)} records"
        )
    table = {name: parquet.column(name).to_numpy(zero_copy_only=False) for name in parquet.column_names}
    # the question and the answer both show, however long the question
    target_text = {t.id: f"{truncate(pool_item(t).prompt, 90)} → {truncate(t.response, 60)}" for t in targets}
    infos = config.get("methods", {})
    methods = [method_view(m, table, infos.get(m, {}), records, target_text) for m in config["settings"]["methods"]]
    selections = {m.name: m.selected for m in methods}
    tasks = [t if isinstance(t, str) and t else "(none)" for t in table["task"].tolist()]
    short = {s: os.path.basename(s) if s else "(none)" for s in set(table["source"].tolist())}
    sources = [short[s] for s in table["source"].tolist()]
    lengths = np.array([_response_length(r) for r in records], dtype=np.float64)
    quantiles = {"pool": _quantiles(lengths), **{m: _quantiles(lengths[rows]) for m, rows in selections.items()}}
    names = list(selections)
    largest = max((len(r) for r in selections.values()), default=0)
    rho = np.eye(len(names))
    for i, a in enumerate(methods):
        for j in range(i + 1, len(methods)):
            r = spearman(a.plotted, methods[j].plotted)
            rho[i, j] = rho[j, i] = np.nan if r is None else r  # a constant score has none: shown as "-"
    detail: dict[str, float] = {}
    for info in infos.values():
        detail.update({k: float(v) for k, v in (info.get("timings_s") or {}).items()})
    return SelectionReport(
        title=run_dir.resolve().name,
        created=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        kind=str(config["settings"].get("kind", "sft")),
        n_pool=len(records),
        budget=int(config.get("budget") or 0),
        methods=methods,
        tasks=_shares("task", tasks, selections),
        sources=_shares("source file", sources, selections),
        lengths=Lengths("characters", lengths, quantiles),
        overlap=Overlap(
            names,
            jaccard_matrix([r.tolist() for r in selections.values()]),
            expected_random_jaccard(len(records), largest),
        ),
        spearman=rho,
        timings=_stages(config.get("timings_s") or {}, names),
        detail_timings=detail,
        settings=dict(config["settings"]),
        provenance=_provenance(config),
        tokenization=dict(config.get("tokenization") or {}),
        notes=list(notes),
    )


def _percentiles(values: np.ndarray) -> np.ndarray:
    """Mid-rank percentile in (0, 100) of each finite value, ties sharing one; NaN elsewhere."""
    ok = np.isfinite(values)
    out = np.full(len(values), np.nan)
    if ok.any():
        out[ok] = 100.0 * (average_ranks(values[ok]) - 0.5) / int(ok.sum())
    return out


def _stages(timings: dict[str, float], methods: Sequence[str]) -> dict[str, float]:
    """Seconds per stage in the order a run goes through them, ``total`` last. The page's own time
    (``report``) is not known while the page is made, so both a run's page and a rebuilt one leave it out."""
    order = ["read", "load_model", *[f"score_{m}" for m in methods], "write"]
    rank = {k: i for i, k in enumerate(order)}
    keys = sorted((k for k in timings if k not in ("report", "total")), key=lambda k: (rank.get(k, len(order)), k))
    out = {k: float(timings[k]) for k in keys}
    if "total" in timings:
        out["total"] = float(timings["total"])
    return out


def _provenance(config: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    model = config.get("model") or {}
    for k, v in model.items():
        out[f"model {k}"] = json.dumps(v) if isinstance(v, dict | list) else str(v)
    for role, d in (config.get("data") or {}).items():
        if d:
            out[f"{role}"] = f"{d.get('path')} ({d.get('n')} records, fingerprint {d.get('fingerprint')})"
    for key in ("gradsift_version", "python", "machine"):
        if key in config:
            out[key.replace("_", " ")] = str(config[key])
    return out


def write_report(
    run_dir: str | Path,
    config: dict[str, Any],
    records: Sequence[Example | Pair],
    targets: Sequence[Example] = (),
    notes: Sequence[str] = (),
) -> Path:
    """Build and write ``report.html`` into `run_dir` (atomically); arguments as `build_report`.

    Returns:
        The report's path.
    """
    data = build_report(run_dir, config, records, targets, notes)
    path = Path(run_dir) / REPORT
    write_text_atomic(path, render_selection_html(data, make_figures(data)))
    return path


def rebuild_report(run_dir: str | Path, pool: str | None = None, targets: str | None = None) -> Path:
    """Rebuild a finished run's ``report.html`` from its files (``gradsift report RUN_DIR``).

    The pool and targets are read from the paths ``config.json`` names (relative paths from the current
    directory), or from `pool` and `targets` when given, and must be the data the run selected from.

    Args:
        run_dir: A directory written by ``gradsift select`` (with ``config.json`` and ``scores.parquet``).
        pool: The pool's path, when it moved.
        targets: The targets' path, when they moved.

    Returns:
        The report's path.

    Raises:
        FileNotFoundError: No ``config.json`` or ``scores.parquet`` in `run_dir` (an unfinished run), or the
            pool is not where ``config.json`` says.
        ValueError: The pool read is not the one the run selected from (another fingerprint).
    """
    run_dir = Path(run_dir)
    for name in ("config.json", "scores.parquet"):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"{run_dir / name}: not found; is {run_dir} a finished gradsift select run?")
    config = json.loads((run_dir / "config.json").read_text())
    s = config["settings"]
    limit = int(s.get("pool_limit") or 0)
    pool_path = pool or s["pool"]
    if not str(pool_path).startswith("hf:") and not Path(pool_path).exists():
        raise FileNotFoundError(f"{pool_path}: the run's pool is not there; pass --pool with its new path")
    if s.get("kind") == "pair":
        records: list[Any] = load_pairs(pool_path, fmt=s.get("pool_format"), on_invalid=s.get("on_invalid", "raise"))
    else:
        records = load_examples(
            pool_path, kind=Kind.SFT, fmt=s.get("pool_format"), on_invalid=s.get("on_invalid", "raise")
        )
    records = records[:limit] if limit else records
    want = config["data"]["pool"]["fingerprint"]
    if fingerprint(records) != want:
        raise ValueError(
            f"{pool_path} is not the pool {run_dir} selected from (fingerprint {fingerprint(records)}, the run's "
            f"{want}); pass --pool with the run's pool"
        )
    notes = []
    target_records: list[Example] = []
    targets_path = targets or s.get("targets")
    if targets_path:
        if str(targets_path).startswith("hf:") or Path(targets_path).exists():
            target_records = load_examples(
                targets_path, kind=Kind.TARGET, fmt=s.get("targets_format"), on_invalid=s.get("on_invalid", "raise")
            )
            t_limit = int(s.get("targets_limit") or 0)
            target_records = target_records[:t_limit] if t_limit else target_records
        else:
            notes.append(f"targets {targets_path} not found: the targets a candidate helps are shown by id only")
    return write_report(run_dir, config, records, target_records, notes)
