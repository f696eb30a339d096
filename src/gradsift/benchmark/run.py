"""`bench`: compare selectors on one pool and one target set (methods x budgets x seeds), with paired
statistics on the same evaluation examples, each method's selection cost, the survey's efficiency and
feasibility metrics (methods.md section 5) and a report.

The Python API behind ``gradsift bench CONFIG.yaml``. One run, in ``out``:

1. ``data/``: the pool, targets, held-out targets and evaluation sets, mixed from the configured sources
   (paths, per-source limits and task labels, a seeded shuffle and a target/held-out split) and written once as
   canonical JSONL with ``data.json`` (the data settings, counts and fingerprints).
2. ``prepare/``: optional steps run once before selection (`gradsift.benchmark.prepare`: align, then break);
   the model after them is the base model of every later step.
3. ``select/``: one `gradsift.pipeline.run_select` per method and selection seed at the largest budget (each
   method with its own cache by default, so its measured cost is its own). A method whose selection is the
   top-k of its scores gets its smaller budgets from the same scores; one with its own selection rule (BIDS,
   bands) is run again per budget. At the budget ``band`` a band method keeps its whole band and every other
   method the size of `BenchConfig.band_size_of`'s band. A method this version of gradsift does not provide
   is reported and skipped.
4. ``cells/lr*``: with `lr_search`, the random selection of every budget (first seed) trained with each
   learning rate and scored on the deciding benchmark; the best learning rate (mean over budgets) trains
   every cell, and the search is recorded in ``lr_search.json``, ``metrics.json`` and ``RUN.md``.
5. ``cells/<method>__k<budget>__s<seed>[__lr<lr>]/``: per grid cell the selected records, a LoRA fine-tune
   (`gradsift.training.run.run_train`: SFT or DPO) with that training seed, one results JSON per benchmark
   (every example's output kept) and ``cell.json``. Every method is trained with every seed; a method in
   ``seeded_methods`` (random) also selects with it. Baselines: ``full`` (the whole pool, the same steps),
   ``full-epoch`` (the whole pool, one epoch), ``base`` (the untrained model), ``original`` and ``aligned``
   (the models before and inside `prepare`). Cells run in ``workers`` processes side by side
   (`gradsift.benchmark.work`); a rerun skips finished cells, resumes unfinished training and re-evaluates
   only benchmarks whose settings changed.
6. ``results`` (default ``out``): ``results.csv``/``results.parquet`` (one row per cell, with its selection
   cost), ``comparisons.csv`` (paired comparisons), ``efficiency.csv``, ``feasibility.csv``, ``metrics.json``,
   ``RUN.md`` and the report (``report.html``, self-contained; ``report.md`` with ``figures/``).
7. ``keep`` (optional): the run's durable record (`gradsift.benchmark.keep`), copied after every finished unit:
   selections, training records and per-example evaluation results, without models. A run whose ``out`` was
   lost (a scratch disk, a fresh clone) restores them and resumes where the record ends.

Paired statistics (`gradsift.benchmark.metrics`): for each benchmark metric that is a mean over examples,
each (method, budget)'s mean over examples of its seed-averaged values, and its difference from random at the
same budget, from full (same steps), from full-epoch and, for gradient methods, from embed, each with a
bootstrap 95% interval over examples and seeds. A method "beats" a reference only where the interval excludes
0 on the better side.

PIR of a row = mean over benchmarks of its primary metric relative to the mean of the ``full`` rows
(`gradsift.evaluation.selector_metrics.BenchmarkScore`: inverted for lower-is-better metrics); a benchmark
whose ratio is undefined (a zero full-data exact match) is left out of that mean and named in the notes.
Efficiency is computed per budget (`gradsift.benchmark.tables`); feasibility ranks come from
`gradsift_feasibility` for the methods run (a variant has its method's entries).

Settings changes: a rerun with other data, model, prepare, selection, variant or training settings in the
same ``out`` is refused unless `overwrite`, which deletes the previous run's selections, cells and caches but
keeps what checks itself: the data sets (rebuilt when their spec changed) and the prepare steps (each redone
when its settings, its check set or the model given to it changed, so a new break keeps a finished align);
changing the grid adds cells, changing benchmarks or a set only they read (`BenchConfig.deciding_sets`)
re-evaluates.
"""

from __future__ import annotations

import datetime as dt
import json
import resource
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from gradsift.atomic import write_json_atomic
from gradsift.benchmark import keep
from gradsift.benchmark.config import BAND, BAND_METHODS, BenchConfig
from gradsift.benchmark.prepare import PrepareResult, run_prepare
from gradsift.benchmark.reportdata import collect_report_data, write_report, write_run_md
from gradsift.benchmark.sets import Record, build_set, fingerprint, read_set, record_row
from gradsift.benchmark.tables import (
    add_pir,
    comparisons,
    efficiency_rows,
    json_safe,
    smoke_note,
    smoke_reasons,
    write_tables,
)
from gradsift.benchmark.work import (
    Cell,
    CellTask,
    Context,
    PeriodicFlush,
    SelectTask,
    Workers,
    run_cell,
    run_selection,
    say,
)
from gradsift.data.load import write_jsonl
from gradsift.evaluation.selector_metrics import GRADSIFT_METHODS, FeasibilityAttributes, gradsift_feasibility
from gradsift.report.data import MethodSelection, ReportData
from gradsift.rundir import LOCK_FILE, locked_dir
from gradsift.selection.budget import Budget
from gradsift.settings import check_same_settings


@dataclass
class BenchResult:
    """What a bench run produced.

    Attributes:
        table: One row per cell (method, budget, seed) with its metrics, PIR columns, timings and selection cost.
        comparisons: Paired comparisons, per benchmark (`gradsift.benchmark.tables.comparisons`).
        efficiency: One row per (budget, method): mean SDF and PIR over seeds, efficiency and its rank.
        feasibility: The survey's feasibility table of the methods run.
        lr_search: The learning-rate search (None without one).
        unavailable: Methods skipped, with the reason.
        notes: Caveats found while computing the metrics.
        out: The working directory.
        results: The directory with the tables and the report.
        report: What the report shows.
    """

    table: Any
    comparisons: dict[str, Any]
    efficiency: list[dict[str, Any]]
    feasibility: list[dict[str, Any]]
    lr_search: dict[str, Any] | None
    unavailable: dict[str, str]
    notes: list[str]
    out: Path
    results: Path
    report: ReportData


def _cpu_seconds(live_children: bool = False) -> float:
    """CPU seconds of this process and its finished children (the workers), and with `live_children` those
    still running."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    total = own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
    if live_children:
        import psutil

        for child in psutil.Process().children(recursive=True):
            try:
                times = child.cpu_times()
            except psutil.Error:  # ended meanwhile: counted by RUSAGE_CHILDREN once reaped
                continue
            total += times.user + times.system
    return total


class _Bench:
    """State of one bench run (see the module docstring for the steps)."""

    def __init__(self, cfg: BenchConfig, workers: Workers | None = None) -> None:
        self.cfg = cfg
        self.workers = workers or Workers(1, cfg.progress)
        self.out = Path(cfg.out)
        self.sets: dict[str, list[Record]] = {}
        self.set_paths: dict[str, Path] = {}
        self.prepared = PrepareResult(models={"original": cfg.model, "base": cfg.model})
        self.unavailable: dict[str, str] = {}
        self.notes: list[str] = []
        self.selections: dict[tuple[str, str, int], MethodSelection] = {}
        self.costs: dict[tuple[str, str, int], dict[str, float | None]] = {}
        self.lr: float | None = None
        self.lr_record: dict[str, Any] | None = None
        self.keep = Path(cfg.keep) if cfg.keep else None

    @property
    def ctx(self) -> Context:
        return Context(self.cfg, {k: str(v) for k, v in self.set_paths.items()}, dict(self.prepared.models))

    # -- directory ------------------------------------------------------------------------------------------

    def check_out(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / "bench.json"
        identity = self.cfg.identity()
        if self.keep is not None:
            keep.check(self.keep, identity, self.cfg.overwrite)
        if path.exists():
            try:
                old = json.loads(path.read_text())["identity"]
            except (OSError, ValueError, KeyError, TypeError) as e:
                if not self.cfg.overwrite:
                    raise ValueError(
                        f"{path} cannot be read ({e}); pass --overwrite (overwrite=True) to replace the bench run in "
                        f"{self.out}, or choose another out"
                    ) from None
                old = None
            if isinstance(old, dict) and isinstance(old.get("data"), dict):
                # a run made before evaluation-only sets left the identity (BenchConfig.deciding_sets)
                old = {
                    **old,
                    "data": {**old["data"], "sets": _only(old["data"].get("sets"), identity["data"]["sets"])},
                }
            if old != identity:
                if not self.cfg.overwrite:
                    check_same_settings(
                        str(self.out), old, identity, what="a bench run", elsewhere="choose another out"
                    )
                # data/ and prepare/ check their own identity when they are read (prepare_data, run_prepare)
                for sub in ("select", "cells", "cache"):
                    shutil.rmtree(self.out / sub, ignore_errors=True)
                # the old run's sittings: RUN.md's wall time is this run's (a kept prepare step has its own)
                for name in ("lr_search.json", "sittings.json"):
                    (self.out / name).unlink(missing_ok=True)
        elif any(p.name != LOCK_FILE for p in self.out.iterdir()):
            raise ValueError(f"{self.out} is not empty and holds no bench run (bench.json missing); use an empty dir")
        write_json_atomic(
            path, {"identity": identity, "config": json.loads(json.dumps(asdict(self.cfg), default=str))}
        )
        if self.keep is not None:
            restored = keep.restore(self.out, self.keep)
            if restored:
                say(f"restored {len(restored)} files of finished work from {self.keep}")
            self.save_keep()

    def save_keep(self) -> None:
        """Copy what finished into the durable record (`gradsift.benchmark.keep`), when there is one."""
        if self.keep is not None:
            keep.save(self.out, self.keep)

    # -- data -----------------------------------------------------------------------------------------------

    def prepare_data(self) -> None:
        d = self.out / "data"
        d.mkdir(parents=True, exist_ok=True)
        spec = json.loads(json.dumps({"data": asdict(self.cfg.data), "seed": self.cfg.data_seed}, default=str))
        kinds = self.cfg.data.names()
        meta_path = d / "data.json"
        if meta_path.exists() and json.loads(meta_path.read_text()).get("spec") == spec:
            for name, kind in kinds.items():
                self.set_paths[name] = d / f"{name}.jsonl"
                self.sets[name] = read_set(self.set_paths[name], kind)
            return
        t0 = time.perf_counter()
        if meta_path.exists():  # another spec: the sets this run wrote go, so none of a dropped set is left
            for name in json.loads(meta_path.read_text()).get("sets", {}):
                if (d / f"{name}.jsonl").parent == d:
                    (d / f"{name}.jsonl").unlink(missing_ok=True)
        seed = self.cfg.data_seed
        self.sets["pool"], _ = build_set(self.cfg.data.pool, "pool", seed)
        if self.cfg.data.targets is not None:
            self.sets["targets"], held = build_set(self.cfg.data.targets, "targets", seed)
            if self.cfg.data.targets.holdout:
                self.sets["heldout"] = held
        for name, s in self.cfg.data.sets.items():
            self.sets[name], _ = build_set(s, name, seed)
        counts = {}
        for name, records in self.sets.items():
            self.set_paths[name] = d / f"{name}.jsonl"
            write_jsonl(self.set_paths[name], [record_row(r) for r in records])
            tasks = Counter(r.task or "(none)" for r in records)
            counts[name] = {"n": len(records), "fingerprint": fingerprint(records), "tasks": dict(tasks.most_common())}
        write_json_atomic(meta_path, {"spec": spec, "sets": counts})
        # read back, so a first run and a resumed one see identical records
        for name, kind in kinds.items():
            self.sets[name] = read_set(self.set_paths[name], kind)
        sizes = ", ".join(f"{k} {len(v)}" for k, v in self.sets.items())
        say(f"data ready in {time.perf_counter() - t0:.0f}s: {sizes}")

    def prepare_model(self) -> None:
        cfg = self.cfg
        kept = keep.kept_prepare(self.keep) if self.keep is not None else {}
        self.prepared = run_prepare(
            cfg.prepare, cfg.model, cfg.model_settings, self.out, cfg.data_seed, self.sets, self.set_paths, say
        )
        self.notes += keep.compare_prepare(kept, self.prepared.steps)
        self.save_keep()
        for name, step in self.prepared.steps.items():
            if step.get("met") is False:
                until = step["until"]
                self.notes.append(
                    f"prepare {name}: {until['metric']} {step['checks'][-1]:.3f} did not reach "
                    f"{'>=' if until['at_least'] is not None else '<='} {until['at_least'] or until['at_most']} "
                    f"in {step['rounds']} rounds"
                )

    # -- selection ------------------------------------------------------------------------------------------

    def budgets(self) -> list[tuple[str, int]]:
        """The numeric budgets as ``(spec, count)``, smallest first; specs of the same count run once."""
        n = len(self.sets["pool"])
        by_count: dict[int, str] = {}
        for b in self.cfg.budgets:
            if b != BAND:
                by_count.setdefault(Budget.parse(b).resolve(n), b)
        return [(b, k) for k, b in sorted(by_count.items())]

    def all_budgets(self) -> list[tuple[str, int]]:
        """Every budget label with a selection, and its count (the band: the size of `band_size_of`'s band)."""
        out = self.budgets()
        ref = self.selections.get((str(self.cfg.band_size_of), BAND, self.cfg.seeds[0]))
        if BAND in self.cfg.budgets and ref is not None:
            out.append((BAND, len(ref.rows)))
        return out

    def selection_seed(self, method: str, seed: int) -> int:
        return seed if method in self.cfg.seeded_methods else self.cfg.seeds[0]

    def selection_seeds(self, method: str) -> list[int]:
        return list(dict.fromkeys(self.selection_seed(method, s) for s in self.cfg.seeds))

    def _load(self, task: SelectTask, k: int) -> MethodSelection:
        """The selection a finished task wrote (its rows in selection order and every pool row's score)."""
        import pyarrow.parquet as pq

        d = self.out / "select" / task.dirname
        base = self.cfg.base_method(task.method)
        table = pq.read_table(d / "scores.parquet").to_pandas()
        if list(table["id"]) != [r.id for r in self.sets["pool"]]:
            raise RuntimeError(f"{d}: the selection's rows are not the pool's (ids differ); delete {d} and rerun")
        rank = table[f"rank_{base}"].to_numpy()
        rows = [int(i) for i in np.argsort(rank, kind="stable") if rank[i] >= 0]
        score = table[f"score_{base}"].to_numpy(dtype=np.float64)
        return MethodSelection(task.method, k if task.k is not None else len(rows), task.seed, rows, score)

    def _run_tasks(self, tasks: list[SelectTask]) -> dict[SelectTask, dict[str, Any]]:
        def done(task: SelectTask, meta: dict[str, Any], seconds: float) -> None:
            if "unavailable" in meta:
                self.unavailable[task.method] = meta["unavailable"]
                say(f"method {task.method}: not available ({meta['unavailable']}); skipped")
            elif seconds > 1:
                say(f"{task.label}: {meta['n_selected']} rows in {meta['seconds']:.0f}s")
            self.save_keep()

        # methods that share one cache would compute a shared step twice at once: they select one after another
        workers = self.workers if self.cfg.select_cache == "method" else Workers(1, self.cfg.progress)
        metas = workers.run_all(self.ctx, tasks, run_selection, done)
        return dict(zip(tasks, metas, strict=True))

    def select(self) -> None:
        from gradsift.selection.topk import top_k

        cfg = self.cfg
        budgets = self.budgets()
        k_max = budgets[-1][1] if budgets else None
        band = BAND in cfg.budgets
        is_band = {m: cfg.base_method(m) in BAND_METHODS for m in cfg.methods}
        first: list[SelectTask] = []
        for m in cfg.methods:
            for s in self.selection_seeds(m):
                if k_max is not None:
                    first.append(SelectTask(m, s, k_max))
                if band and is_band[m]:
                    first.append(SelectTask(m, s, None))
        # a variant that shares a method's cache (Variant.cache) selects after that method's selection filled it
        sharing = [t for t in first if cfg.cache_owner(t.method)]
        owners = {t: SelectTask(str(cfg.cache_owner(t.method)), t.seed, t.k) for t in sharing}
        metas = self._run_tasks(list(dict.fromkeys([*(t for t in first if t not in owners), *owners.values()])))
        metas |= self._run_tasks(sharing)
        cold: dict[tuple[str, int], dict[str, Any]] = {}
        for t, meta in metas.items():
            if "unavailable" not in meta:
                cold.setdefault((t.method, t.seed), meta)  # the first run of a method computed its cache
        available = [m for m in cfg.methods if m not in self.unavailable]
        later: dict[tuple[str, str, int], SelectTask] = {}
        for m in available:
            for s in self.selection_seeds(m):
                if k_max is not None:
                    top = SelectTask(m, s, k_max)
                    sel = self._load(top, k_max)
                    for label, k in budgets:
                        if k == k_max:
                            self.selections[(m, label, s)] = sel
                        elif metas[top]["topk"]:
                            rows = top_k(sel.scores, k).indices
                            self.selections[(m, label, s)] = MethodSelection(m, k, s, rows, sel.scores)
                        else:
                            later[(m, label, s)] = SelectTask(m, s, k)
                if band and is_band[m]:
                    self.selections[(m, BAND, s)] = self._load(SelectTask(m, s, None), 0)
        if band:
            ref = self.selections.get((str(cfg.band_size_of), BAND, cfg.seeds[0]))
            if ref is None:
                self.notes.append(f"budget band: {cfg.band_size_of} has no band (not run), so no method runs at it")
            else:
                k_band = len(ref.rows)
                for m in available:
                    if is_band[m]:
                        continue
                    for s in self.selection_seeds(m):
                        if k_max is not None and metas[SelectTask(m, s, k_max)]["topk"]:
                            scores = self.selections[(m, budgets[-1][0], s)].scores
                            rows = top_k(scores, k_band).indices
                            self.selections[(m, BAND, s)] = MethodSelection(m, k_band, s, rows, scores)
                        else:
                            later[(m, BAND, s)] = SelectTask(m, s, k_band)
        more = self._run_tasks(list(dict.fromkeys(later.values())))
        for (m, label, s), task in later.items():
            self.selections[(m, label, s)] = self._load(task, int(task.k or 0))
        for m, label, s in self.selections:
            meta = cold.get((m, s)) or more[later[(m, label, s)]]
            # what it spent, and what the cached steps it reused cost when computed (gradsift.costs)
            reused = meta.get("reused") or {}
            cpu = meta.get("cpu_seconds")
            cost = {
                "wall_s": meta["seconds"] + float(reused.get("wall_s", 0.0)),
                "cpu_s": None if cpu is None else cpu + float(reused.get("cpu_s", 0.0)),
            }
            self.costs[(m, label, s)] = cost
        done = sorted({m for m, _, _ in self.selections})
        say(f"selections ready: {', '.join(done) or 'none'}")

    # -- learning rate --------------------------------------------------------------------------------------

    def search_lr(self) -> None:
        """Train random selections with each learning rate of the grid and keep the best (module docstring)."""
        cfg = self.cfg
        search, spec = cfg.lr_search, cfg.lr_benchmark()
        if search is None or spec is None:
            return
        s0 = cfg.seeds[0]
        budgets = [(label, k) for label, k in self.all_budgets() if ("random", label, s0) in self.selections]
        tasks = [
            CellTask(Cell("random", label, k, s0, self.selections[("random", label, s0)].rows, lr), (spec,))
            for label, k in budgets
            for lr in search.grid
        ]
        say(f"learning rate: {len(tasks)} cells ({len(search.grid)} rates x {len(budgets)} budgets)")
        rows = self.workers.run_all(self.ctx, tasks, run_cell, self._progress(len(tasks), spec.column))
        values: dict[str, dict[str, float]] = {}
        for task, row in zip(tasks, rows, strict=True):
            values.setdefault(f"{task.cell.lr:g}", {})[task.cell.budget] = row[spec.column]
        means = {lr: float(np.mean(list(v.values()))) for lr, v in values.items()}
        pick = max if spec.higher_is_better else min
        chosen = pick(search.grid, key=lambda lr: means[f"{lr:g}"])
        self.lr = chosen
        self.lr_record = {
            "grid": search.grid,
            "benchmark": search.benchmark,
            "data": spec.data,
            "metric": spec.metric,
            "higher_is_better": spec.higher_is_better,
            "budgets": [label for label, _ in budgets],
            "seed": s0,
            "values": {lr: {**v, "mean": means[lr]} for lr, v in values.items()},
            "chosen": chosen,
        }
        write_json_atomic(self.out / "lr_search.json", self.lr_record)
        self.save_keep()
        say(f"learning rate {chosen:g} chosen ({spec.column} on {spec.data}, mean over budgets)")

    # -- cells ----------------------------------------------------------------------------------------------

    def cells(self) -> list[Cell]:
        cfg = self.cfg
        n = len(self.sets["pool"])
        everything = list(range(n))
        cells = [Cell(b, "0", 0, cfg.seeds[0], model=b) for b in ("base", "original", "aligned") if b in cfg.baselines]
        if "full" in cfg.baselines:
            cells += [Cell("full", "100%", n, seed, everything, self.lr) for seed in cfg.seeds]
        for label, k in self.all_budgets():
            for method in cfg.methods:
                for seed in cfg.seeds:
                    sel = self.selections.get((method, label, self.selection_seed(method, seed)))
                    if sel is not None:
                        size = len(sel.rows) if label == BAND else k
                        cells.append(Cell(method, label, size, seed, sel.rows, self.lr))
        # one epoch of the whole pool costs many matched-step cells: last, so a sitting stopped early has the
        # paired comparisons with random and full first
        if "full-epoch" in cfg.baselines:
            cells += [Cell("full-epoch", "epoch", n, seed, everything, self.lr, epoch=True) for seed in cfg.seeds]
        return cells

    def _progress(self, total: int, column: str) -> Any:
        """A progress line per finished cell, with an ETA from the cells that did work (not only read back)."""
        spent: list[float] = []
        count = [0]

        def done(task: CellTask, row: dict[str, Any], seconds: float) -> None:
            count[0] += 1
            if seconds > 1.0:
                spent.append(seconds)
            eta = float(np.mean(spent)) * (total - count[0]) / self.cfg.workers if spent else 0.0
            value = row.get(column)
            shown = f"{value:.4g}" if isinstance(value, float) else "-"
            say(f"[{count[0]}/{total}] {task.label}: {column}={shown} ({seconds:.0f}s; eta {eta / 60:.1f} min)")
            self.save_keep()

        return done

    def run_cells(self) -> list[dict[str, Any]]:
        cells = self.cells()
        specs = tuple(self.cfg.benchmarks)
        tasks = [CellTask(c, specs) for c in cells]
        return self.workers.run_all(
            self.ctx, tasks, run_cell, self._progress(len(tasks), self.cfg.benchmarks[0].column)
        )

    # -- aggregate ------------------------------------------------------------------------------------------

    def aggregate(self, rows: list[dict[str, Any]]) -> tuple[Any, dict[str, Any], list[dict[str, Any]], list[Any]]:
        import pandas as pd

        from gradsift.report.data import BenchmarkInfo

        cfg = self.cfg
        table = pd.DataFrame(rows)
        for key in ("wall_s", "cpu_s"):
            table[f"select_{key}"] = [
                (self.costs.get((r["method"], r["budget"], self.selection_seed(r["method"], r["seed"]))) or {}).get(
                    key
                )
                for r in rows
            ]
        lead = ["method", "budget", "k", "seed", "n_selected", "sdf"]
        metric_cols = [c for b in cfg.benchmarks for c in sorted(table.columns) if c.startswith(f"{b.name}.")]
        tail = ["lr", "train_steps", "train_loss", "select_wall_s", "select_cpu_s", "train_s", "train_cpu_s", "eval_s"]
        tail += ["eval_cpu_s", "cell"]
        table = table[lead + metric_cols + [c for c in tail if c in table.columns]]
        infos = [BenchmarkInfo(b.name, b.kind.value, b.metric or "", bool(b.higher_is_better)) for b in cfg.benchmarks]
        table = add_pir(table, infos, self.notes)
        paired = comparisons(self.out, table, cfg, self.costs_by_group(), self.notes)
        steps = cfg.train.get("max_steps")
        smoke = smoke_note(smoke_reasons(paired, len(cfg.seeds), None if steps is None else int(steps)))
        if smoke and smoke not in self.notes:
            self.notes.insert(0, smoke)
        efficiency = efficiency_rows(table, infos, cfg.references, self.notes)
        return table, paired, efficiency, self.feasibility(table)

    def costs_by_group(self) -> dict[tuple[str, str], dict[str, float | None]]:
        """Each (method, budget)'s selection cost, mean over its selection seeds."""
        out: dict[tuple[str, str], dict[str, float | None]] = {}
        groups: dict[tuple[str, str], list[dict[str, float | None]]] = {}
        for (m, label, _), cost in self.costs.items():
            groups.setdefault((m, label), []).append(cost)
        for key, costs in groups.items():
            out[key] = {
                k: float(np.mean([c[k] for c in costs])) if all(c.get(k) is not None for c in costs) else None
                for k in ("wall_s", "cpu_s")
            }
        return out

    def feasibility(self, table: Any) -> list[dict[str, Any]]:
        known = {a.method: a for a in GRADSIFT_METHODS}
        methods = list(dict.fromkeys(str(m) for m in table["method"]))
        extra: list[FeasibilityAttributes] = [
            replace(known[self.cfg.base_method(m)], method=m)
            for m in methods
            if m in self.cfg.variants and self.cfg.base_method(m) in known
        ]
        names = [m for m in methods if m in known or m in self.cfg.variants]
        return gradsift_feasibility(names, extra=extra) if names else []


class _Sitting:
    """This sitting's entry in ``out/sittings.json``, rewritten every `every` seconds while the run lasts, so a
    killed sitting still counts in ``RUN.md`` (less at most `every` seconds); ``stopped`` marks one that did
    not reach its end. CPU seconds: this process and its workers, live or finished."""

    def __init__(self, out: Path, cfg: BenchConfig, every: float = 30.0) -> None:
        self.path, self.cfg = out / "sittings.json", cfg
        self.before = json.loads(self.path.read_text()) if self.path.exists() else []
        self.start, self.t0, self.cpu0 = dt.datetime.now(dt.UTC), time.perf_counter(), _cpu_seconds()
        self._flusher = PeriodicFlush(lambda: self._write(stopped=True), every).start()

    def _write(self, stopped: bool) -> list[dict[str, Any]]:
        entry = {
            "start": self.start.strftime("%Y-%m-%d %H:%M:%S UTC"),
            "end": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
            "wall_s": round(time.perf_counter() - self.t0, 1),
            "cpu_s": round(_cpu_seconds(live_children=True) - self.cpu0, 1),
            "workers": self.cfg.workers,
            "command": self.cfg.command,
        }
        if stopped:
            entry["stopped"] = True
        sittings = [*self.before, entry]
        write_json_atomic(self.path, sittings)
        return sittings

    def __enter__(self) -> _Sitting:
        return self

    def end(self) -> list[dict[str, Any]]:
        """Record the sitting as finished; returns every sitting so far."""
        self._flusher.stop()
        return self._write(stopped=False)

    def __exit__(self, *exc: Any) -> None:
        if self._flusher.stop():  # not ended: an error; the sitting is kept, marked stopped
            self._write(stopped=True)


def _only(sets: Any, deciding: dict[str, Any]) -> Any:
    """`sets` of a stored identity without the sets this config reads only in benchmarks."""
    return {k: v for k, v in sets.items() if k in deciding} if isinstance(sets, dict) else sets


def run_bench(cfg: BenchConfig) -> BenchResult:
    """Run a bench end to end (see the module docstring); resumes where a previous run stopped.

    Raises:
        ValueError: Other settings in `cfg.out` without overwrite, or data that does not fit the config.
        DataError: Unreadable or malformed source data.
        RunDirBusy: Another bench runs in `cfg.out`.
    """
    with locked_dir(cfg.out):
        return _run(cfg)


def _grid(bench: _Bench) -> list[dict[str, Any]]:
    """Steps 1-5 of the module docstring: data, prepare, selections, learning rate and cells."""
    bench.prepare_data()
    bench.prepare_model()
    bench.select()
    bench.search_lr()
    if "max_steps" not in bench.cfg.train:
        bench.notes.append("train.max_steps is not set: each cell trains its epochs, so steps differ by budget")
    return bench.run_cells()


def _run(cfg: BenchConfig) -> BenchResult:
    t0 = time.perf_counter()
    with Workers(cfg.workers, cfg.progress) as workers:
        bench = _Bench(cfg, workers)
        bench.check_out()
        with _Sitting(bench.out, cfg) as sitting:
            rows = _grid(bench)
            table, paired, efficiency, feasibility = bench.aggregate(rows)
            results = cfg.results_dir()
            results.mkdir(parents=True, exist_ok=True)
            write_tables(results, table, paired, efficiency, feasibility)
            sittings = sitting.end()
            bench.save_keep()
    data = collect_report_data(
        cfg,
        sets=bench.sets,
        budgets=bench.all_budgets(),
        selections=bench.selections,
        table=table,
        comparisons=paired,
        efficiency=efficiency,
        feasibility=feasibility,
        lr_search=bench.lr_record,
        prepare=bench.prepared.steps,
        unavailable=bench.unavailable,
        notes=bench.notes,
    )
    write_json_atomic(
        results / "metrics.json",
        json_safe(
            {
                "name": cfg.name,
                "created": data.created,
                "machine": data.machine,
                "settings": data.settings,
                "steps": {"max_steps": cfg.train.get("max_steps"), "lr": bench.lr or cfg.train.get("lr")},
                "lr_search": bench.lr_record,
                "prepare": bench.prepared.steps,
                "benchmarks": paired,
                "efficiency": efficiency,
                "feasibility": feasibility,
                "unavailable": bench.unavailable,
                "notes": bench.notes,
                "sittings": sittings,
            }
        ),
    )
    write_run_md(results / "RUN.md", data, sittings)
    if cfg.report:
        write_report(data, results)
    say(f"done in {(time.perf_counter() - t0) / 60:.1f} min; results in {results}")
    return BenchResult(
        table,
        paired,
        efficiency,
        feasibility,
        bench.lr_record,
        bench.unavailable,
        bench.notes,
        bench.out,
        results,
        data,
    )
