"""`bench`: compare selectors on one pool and one target set (methods x budgets x seeds), with the survey's
efficiency and feasibility metrics (methods.md section 5) and a report.

The Python API behind ``gradsift bench CONFIG.yaml``. One run, in ``out``:

1. ``data/``: the pool, targets, held-out targets and evaluation sets, mixed from the configured sources
   (paths, per-source limits and task labels, a seeded shuffle and a target/held-out split) and written once as
   canonical JSONL with ``data.json`` (the data settings, counts and fingerprints).
2. ``prepare/``: optional steps run once before selection. ``harmful_finetune`` trains a LoRA on harmful
   completions (e.g. HH-RLHF ``rejected`` answers to harmful requests) and merges it into the model, so a
   safety benchmark starts from a model with something to repair; that merged model is then the base model
   of every later step.
3. ``select/``: one `gradsift.pipeline.run_select` per method and seed, at the largest budget, all sharing
   ``cache/`` (warm-up checkpoints and feature stores are computed once and reused across methods). A method
   whose selection is the top-k of its scores gets its smaller budgets from the same scores (scores do not
   depend on the budget); one with its own selection rule (BIDS, bands) is run again per budget.
   A method that this version of gradsift does not provide is reported and skipped.
4. ``cells/<method>__k<budget>__s<seed>/``: per grid cell the selected records, a LoRA fine-tune
   (`gradsift.training.run.run_train`: SFT or DPO), one results JSON per benchmark (per-example outputs kept)
   and ``cell.json``, written last. Baselines: ``full`` (trained on the whole pool), ``base`` (the untrained
   model) and, with a prepare step, ``original`` (the model before it). A rerun skips every cell whose
   ``cell.json`` matches the current benchmarks, resumes unfinished training, and re-evaluates only
   benchmarks whose settings changed.
5. ``results`` (default ``out``): ``results.csv``/``results.parquet`` (one row per method, budget and seed;
   one column per benchmark metric; PIR per benchmark and mean), ``efficiency.csv``, ``feasibility.csv``,
   ``metrics.json`` and the report (``report.html``, self-contained; ``report.md`` with ``figures/``).

The config is `gradsift.benchmark.config`, the data sets `gradsift.benchmark.sets`, the tables
`gradsift.benchmark.tables` and the report's data `gradsift.benchmark.reportdata`.

Metrics. PIR of a row = mean over benchmarks of its primary metric relative to the ``full`` row's
(`gradsift.evaluation.selector_metrics.BenchmarkScore`: inverted for lower-is-better metrics); a benchmark
whose ratio is undefined (a zero full-data exact match, as a 135M model gets on GSM8K) is left out of that
mean and named in the notes. Efficiency is computed per budget: each method's mean (SDF, PIR) over seeds, its
signed distance from the line through the reference methods (default: random at the same budget, and full
data at (1, 1)). Feasibility ranks come from `gradsift_feasibility` for the methods run.

Settings changes: a rerun with other data, model, prepare, selection or training settings in the same
``out`` is refused unless `overwrite` (which deletes the previous run's files); changing the grid adds cells,
changing benchmarks re-evaluates.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gradsift.atomic import write_json_atomic
from gradsift.benchmark.config import BenchConfig, BenchmarkSpec
from gradsift.benchmark.reportdata import collect_report_data, write_report
from gradsift.benchmark.sets import Record, as_example, build_set, fingerprint, read_set, record_row
from gradsift.benchmark.tables import add_pir, efficiency_rows, json_safe, write_tables
from gradsift.data.load import write_jsonl
from gradsift.evaluation.selector_metrics import GRADSIFT_METHODS, gradsift_feasibility
from gradsift.evaluation.tasks import TaskKind
from gradsift.recipes.options import applicable
from gradsift.report.data import BenchmarkInfo, MethodSelection, ReportData
from gradsift.rundir import LOCK_FILE, locked_dir
from gradsift.selection.budget import Budget
from gradsift.settings import check_same_settings
from gradsift.training.run import TrainConfig


@dataclass
class BenchResult:
    """What a bench run produced.

    Attributes:
        table: One row per cell (method, budget, seed) with its metrics, PIR columns and timings.
        efficiency: One row per (budget, method): mean SDF and PIR over seeds, efficiency and its rank.
        feasibility: The survey's feasibility table of the methods run.
        unavailable: Methods skipped, with the reason.
        notes: Caveats found while computing the metrics.
        out: The working directory.
        results: The directory with the tables and the report.
        report: What the report shows.
    """

    table: Any
    efficiency: list[dict[str, Any]]
    feasibility: list[dict[str, Any]]
    unavailable: dict[str, str]
    notes: list[str]
    out: Path
    results: Path
    report: ReportData


@dataclass
class Cell:
    """One trained-and-evaluated model of the grid."""

    method: str
    budget: str
    k: int
    seed: int
    rows: list[int] | None = None

    @property
    def name(self) -> str:
        if self.method in ("base", "original"):
            return self.method
        return f"{self.method}__k{self.k}__s{self.seed}"


# ---------------------------------------------------------------------------------------------------------------
# The run


def _say(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


class _Bench:
    """State of one bench run (see the module docstring for the steps)."""

    def __init__(self, cfg: BenchConfig) -> None:
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.sets: dict[str, list[Record]] = {}
        self.set_paths: dict[str, Path] = {}
        self.model = cfg.model
        self.unavailable: dict[str, str] = {}
        self.notes: list[str] = []
        self.selections: dict[tuple[str, int, int], MethodSelection] = {}
        self.select_seconds: dict[tuple[str, int], float] = {}

    # -- directory ------------------------------------------------------------------------------------------

    def check_out(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / "bench.json"
        identity = self.cfg.identity()
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
            if old != identity:
                if not self.cfg.overwrite:
                    check_same_settings(
                        str(self.out), old, identity, what="a bench run", elsewhere="choose another out"
                    )
                for sub in ("data", "prepare", "select", "cells", "cache"):
                    shutil.rmtree(self.out / sub, ignore_errors=True)
        elif any(p.name != LOCK_FILE for p in self.out.iterdir()):
            raise ValueError(f"{self.out} is not empty and holds no bench run (bench.json missing); use an empty dir")
        write_json_atomic(path, {"identity": identity, "config": json.loads(json.dumps(asdict(self.cfg)))})

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
        _say(f"data ready in {time.perf_counter() - t0:.0f}s: {sizes}")

    # -- prepare --------------------------------------------------------------------------------------------

    def prepare_model(self) -> None:
        harmful = self.cfg.prepare.harmful_finetune if self.cfg.prepare else None
        if harmful is None:
            return
        from gradsift.model.load import load_model
        from gradsift.training.run import run_train

        d = self.out / "prepare"
        merged = d / "model"
        self.model = str(merged)
        if (merged / "config.json").exists():
            return
        t0 = time.perf_counter()
        records, _ = build_set(harmful.data, "harmful", self.cfg.data_seed)
        d.mkdir(parents=True, exist_ok=True)
        data_path = d / "harmful.jsonl"
        write_jsonl(data_path, [record_row(r) for r in records])
        tc = TrainConfig(
            data=str(data_path),
            out=str(d / "harmful"),
            kind="sft",
            model=self.cfg.model,
            dtype=self.cfg.dtype,
            device=self.cfg.device,
            progress=True,
            **harmful.train,
        )
        lm = load_model(self.cfg.model_settings())
        result = run_train(tc, records=list(read_set(data_path, "sft")), loaded=lm)  # type: ignore[arg-type]
        model = result.model.merge_and_unload()
        tmp = d / "model.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp, safe_serialization=True)
        lm.tokenizer.save_pretrained(tmp)
        os.replace(tmp, merged)
        _say(f"prepare: harmful fine-tune on {len(records)} examples, merged in {time.perf_counter() - t0:.0f}s")

    # -- selection ------------------------------------------------------------------------------------------

    def budgets(self) -> list[tuple[str, int]]:
        """The budgets as ``(spec, count)``, smallest first; specs that resolve to the same count run once."""
        n = len(self.sets["pool"])
        by_count: dict[int, str] = {}
        for b in self.cfg.budgets:
            by_count.setdefault(Budget.parse(b).resolve(n), b)
        return [(b, k) for k, b in sorted(by_count.items())]

    def seeds_of(self, method: str) -> list[int]:
        return list(self.cfg.seeds) if method in self.cfg.seeded_methods else [self.cfg.seeds[0]]

    def _run_select(self, method: str, seed: int, k: int) -> tuple[MethodSelection, bool] | None:
        """Select with `method` at budget `k` (cached). Returns the selection and whether it is a top-k."""
        import pyarrow.parquet as pq

        from gradsift.pipeline import SelectConfig, run_select

        d = self.out / "select" / f"{method}__s{seed}__k{k}"
        marker = d / "bench-selection.json"
        if not marker.exists():
            # the config's options serve every method: each selection gets those its method reads
            select = {**self.cfg.select, "options": applicable([method], self.cfg.select.get("options") or {})}
            cfg = SelectConfig(
                pool=str(self.set_paths["pool"]),
                targets=str(self.set_paths["targets"]) if "targets" in self.set_paths else None,
                out=str(d),
                methods=[method],
                budget=str(k),
                kind=self.cfg.kind,
                model=self.model,
                dtype=self.cfg.dtype,
                device=self.cfg.device,
                seed=seed,
                cache_dir=str(self.out / "cache"),
                pool_format="pair" if self.cfg.kind == "pair" else "messages",
                **select,
            )
            t0 = time.perf_counter()
            try:
                res = run_select(cfg)
            except NotImplementedError as e:
                self.unavailable[method] = str(e)
                _say(f"method {method}: not available ({e}); skipped")
                return None
            write_json_atomic(
                marker,
                {"topk": res.scores[method].selected is None, "seconds": round(time.perf_counter() - t0, 3)},
            )
        meta = json.loads(marker.read_text())
        self.select_seconds[(method, seed)] = self.select_seconds.get((method, seed), 0.0) + meta["seconds"]
        table = pq.read_table(d / "scores.parquet").to_pandas()
        ids = [r.id for r in self.sets["pool"]]
        if list(table["id"]) != ids:
            raise RuntimeError(f"{d}: the selection's rows are not the pool's (ids differ); delete {d} and rerun")
        rank = table[f"rank_{method}"].to_numpy()
        rows = [int(i) for i in np.argsort(rank, kind="stable") if rank[i] >= 0]
        score = table[f"score_{method}"].to_numpy(dtype=np.float64)
        return MethodSelection(method, k, seed, rows, score), bool(meta["topk"])

    def select(self) -> None:
        from gradsift.selection.topk import top_k

        budgets = self.budgets()
        k_max = budgets[-1][1]
        for method in self.cfg.methods:
            for seed in self.seeds_of(method):
                if method in self.unavailable:
                    break
                got = self._run_select(method, seed, k_max)
                if got is None:
                    break
                sel, is_topk = got
                for _, k in budgets:
                    if k == k_max:
                        self.selections[(method, k, seed)] = sel
                    elif is_topk:
                        rows = top_k(sel.scores, k).indices
                        self.selections[(method, k, seed)] = MethodSelection(method, k, seed, rows, sel.scores)
                    else:
                        again = self._run_select(method, seed, k)
                        if again is not None:
                            self.selections[(method, k, seed)] = again[0]
        done = sorted({m for m, _, _ in self.selections})
        _say(f"selections ready: {', '.join(done) or 'none'}")

    # -- cells ----------------------------------------------------------------------------------------------

    def cells(self) -> list[Cell]:
        n = len(self.sets["pool"])
        cells = []
        if "base" in self.cfg.baselines:
            cells.append(Cell("base", "0", 0, self.cfg.seeds[0]))
        if "original" in self.cfg.baselines:
            cells.append(Cell("original", "0", 0, self.cfg.seeds[0]))
        if "full" in self.cfg.baselines:
            cells.append(Cell("full", "100%", n, self.cfg.seeds[0], list(range(n))))
        for budget, k in self.budgets():
            for method in self.cfg.methods:
                for seed in self.seeds_of(method):
                    sel = self.selections.get((method, k, seed))
                    if sel is not None:
                        cells.append(Cell(method, budget, k, seed, sel.rows))
        return cells

    def bench_hash(self) -> dict[str, str]:
        return {b.name: b.identity() for b in self.cfg.benchmarks}

    def run_cell(self, cell: Cell) -> dict[str, Any]:
        import gc

        import torch

        from gradsift.model.load import load_model
        from gradsift.training.run import run_train

        d = self.out / "cells" / cell.name
        done = d / "cell.json"
        if done.exists():
            prev = json.loads(done.read_text())
            if prev.get("rows") != cell.rows:
                # the selection changed (its cache was deleted and recomputed): this cell's model is stale
                shutil.rmtree(d)
            elif prev.get("benchmarks") == self.bench_hash():
                return prev["row"]
        d.mkdir(parents=True, exist_ok=True)
        pool = self.sets["pool"]
        row: dict[str, Any] = {
            "method": cell.method,
            "budget": cell.budget,
            "k": cell.k,
            "seed": cell.seed,
            "n_selected": len(cell.rows) if cell.rows is not None else 0,
            "sdf": len(cell.rows) / len(pool) if cell.rows else 0.0,
            "select_s": self.select_seconds.get((cell.method, cell.seed), 0.0),
        }
        t0 = time.perf_counter()
        model = self.cfg.model if cell.method == "original" else self.model
        lm = load_model(self.cfg.model_settings(model))
        if cell.rows is not None:
            records = [pool[i] for i in cell.rows]
            sel_path = d / "selection.jsonl"
            if not sel_path.exists():
                write_jsonl(sel_path, [record_row(r) for r in records])
            tc = TrainConfig(
                data=str(sel_path),
                out=str(d / "train"),
                kind=self.cfg.kind,
                model=model,
                dtype=self.cfg.dtype,
                device=self.cfg.device,
                # TRL prints every logged step as a dict without its progress bar; the bar is one line per cell
                progress=True,
                **{"seed": cell.seed, **self.cfg.train},
            )
            result = run_train(tc, records=records, loaded=lm)  # type: ignore[arg-type]
            lm = dataclasses.replace(lm, model=result.model)
            row["train_steps"] = result.global_step
            log_loss = json.loads((d / "train" / "result.json").read_text()).get("train_loss")
            row["train_loss"] = log_loss
        row["train_s"] = round(time.perf_counter() - t0, 3)
        t1 = time.perf_counter()
        trained = cell.rows is not None
        for b in self.cfg.benchmarks:
            path = d / "eval" / f"{b.name}.json"
            if b.kind is TaskKind.PREFERENCE and not trained:
                # the untrained model is its own reference: every margin is 0 by construction
                row[b.column] = None
                continue
            result_b = json.loads(path.read_text()) if path.exists() else None
            if result_b is None or result_b.get("benchmark_identity") != b.identity():
                result_b = self.evaluate(b, lm, path)
            for key, value in result_b["metrics"].items():
                if isinstance(value, bool | int | float) and not isinstance(value, str):
                    row[f"{b.name}.{key}"] = float(value)
        row["eval_s"] = round(time.perf_counter() - t1, 3)
        write_json_atomic(done, {"row": row, "benchmarks": self.bench_hash(), "rows": cell.rows})
        del lm
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the next cell loads a fresh model copy
        return row

    def evaluate(self, b: BenchmarkSpec, lm: Any, path: Path) -> dict[str, Any]:
        from gradsift.evaluation.run import run_evaluate
        from gradsift.evaluation.tasks import write_results

        records = self.sets[b.data]
        records = records[: b.limit] if b.limit else records
        if b.kind is not TaskKind.PREFERENCE:
            records = [as_example(r) for r in records]
        cfg = b.eval_config(data=str(self.set_paths[b.data]), out=None, progress=self.cfg.progress)
        result = run_evaluate(cfg, records=records, loaded=lm)  # type: ignore[arg-type]
        result["benchmark_identity"] = b.identity()
        write_results(path, result)
        return result

    def run_cells(self) -> list[dict[str, Any]]:
        cells = self.cells()
        rows = []
        spent: list[float] = []
        for i, cell in enumerate(cells, 1):
            t0 = time.perf_counter()
            row = self.run_cell(cell)
            rows.append(row)
            took = time.perf_counter() - t0
            if took > 1.0:
                spent.append(took)
            eta = (sum(spent) / len(spent)) * (len(cells) - i) if spent else 0.0
            primary = self.cfg.benchmarks[0].column
            value = row.get(primary)
            shown = f"{value:.4g}" if isinstance(value, float) else "-"
            _say(f"[{i}/{len(cells)}] {cell.name}: {primary}={shown} ({took:.0f}s; eta {eta / 60:.1f} min)")
        return rows

    # -- aggregate ------------------------------------------------------------------------------------------

    def aggregate(self, rows: list[dict[str, Any]]) -> tuple[Any, list[dict[str, Any]], list[dict[str, Any]]]:
        import pandas as pd

        table = pd.DataFrame(rows)
        lead = ["method", "budget", "k", "seed", "n_selected", "sdf"]
        metric_cols = [c for b in self.cfg.benchmarks for c in sorted(table.columns) if c.startswith(f"{b.name}.")]
        tail = [c for c in ("train_steps", "train_loss", "select_s", "train_s", "eval_s") if c in table.columns]
        table = table[lead + metric_cols + tail]
        infos = [
            BenchmarkInfo(b.name, b.kind.value, b.metric or "", bool(b.higher_is_better)) for b in self.cfg.benchmarks
        ]
        table = add_pir(table, infos, self.notes)
        efficiency = efficiency_rows(table, infos, self.cfg.references, self.notes)
        methods = [m for m in dict.fromkeys(table["method"]) if m in {a.method for a in GRADSIFT_METHODS}]
        feasibility = gradsift_feasibility(methods) if methods else []
        return table, efficiency, feasibility


def run_bench(cfg: BenchConfig) -> BenchResult:
    """Run a bench end to end (see the module docstring); resumes where a previous run stopped.

    Raises:
        ValueError: Other settings in `cfg.out` without overwrite, or data that does not fit the config.
        DataError: Unreadable or malformed source data.
        RunDirBusy: Another bench runs in `cfg.out`.
    """
    with locked_dir(cfg.out):
        return _run(cfg)


def _run(cfg: BenchConfig) -> BenchResult:
    t0 = time.perf_counter()
    bench = _Bench(cfg)
    bench.check_out()
    bench.prepare_data()
    bench.prepare_model()
    bench.select()
    rows = bench.run_cells()
    table, efficiency, feasibility = bench.aggregate(rows)
    results = cfg.results_dir()
    results.mkdir(parents=True, exist_ok=True)
    write_tables(results, table, efficiency, feasibility)
    data = collect_report_data(
        cfg,
        sets=bench.sets,
        budgets=bench.budgets(),
        selections=bench.selections,
        table=table,
        efficiency=efficiency,
        feasibility=feasibility,
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
                "efficiency": efficiency,
                "feasibility": feasibility,
                "unavailable": bench.unavailable,
                "notes": bench.notes,
                "seconds": round(time.perf_counter() - t0, 1),
            }
        ),
    )
    if cfg.report:
        write_report(data, results)
    _say(f"done in {(time.perf_counter() - t0) / 60:.1f} min; results in {results}")
    return BenchResult(table, efficiency, feasibility, bench.unavailable, bench.notes, bench.out, results, data)
