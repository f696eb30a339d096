"""The units of work of a bench run, each cached on disk and runnable in a worker process: a selection (one
method, seed and budget through `gradsift.pipeline.run_select`) and a cell (a fine-tune on a selection, or
none for an untrained model, and its evaluations).

`Workers.run_all` runs a list of them in this process or in ``workers`` processes side by side (spawned once
per run, each with an equal share of the CPU threads). Every unit writes its results under the bench's ``out``
and returns a small summary, so the main process never needs a worker's memory, and a killed run resumes unit
by unit.

Selection cost. A selection's CPU seconds (``time.process_time`` of the process that ran it, all its threads)
and wall seconds are measured around `run_select` and kept in its ``bench-selection.json``, summed over the
sittings it took: a running selection flushes what it has spent to ``select/<task>.spent.json`` every 15 s, so
a selection resumed after a kill reports its whole cost, less at most 15 s per kill. With the bench's default
``select_cache: method`` each method has its own cache, so the cost counts every step the method needs
(warm-up, features, generations, DPO runs, scoring) even where another method needs the same steps. A
selection that reuses a cached step another selection computed (``select_cache: shared``, or a variant reading
its method's cache) is charged what that step cost when it was computed (`gradsift.costs`, kept as
``reused`` in its ``bench-selection.json``), so every cost is stand-alone either way.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import gradsift.costs as costs
from gradsift.atomic import write_json_atomic
from gradsift.benchmark.config import BAND, BenchConfig, BenchmarkSpec
from gradsift.benchmark.sets import Record, as_example, fingerprint, read_set, record_row
from gradsift.data.load import write_jsonl
from gradsift.evaluation.tasks import TaskKind
from gradsift.settings import settings_hash
from gradsift.training.run import TrainConfig


def say(msg: str) -> None:
    """A progress line of the bench on stderr."""
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


@dataclass
class Context:
    """What every unit of work needs (picklable, sent to the workers).

    Attributes:
        cfg: The bench's config.
        set_paths: Each data set's file.
        models: The prepared models: ``base`` (every selection and fine-tune starts from it), ``original``
            and, with an align step, ``aligned``.
    """

    cfg: BenchConfig
    set_paths: dict[str, str]
    models: dict[str, str]

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)


_SETS: dict[tuple[str, int, int], list[Record]] = {}
"""Data sets read by this process, by path and version (a worker reads each once; a rewritten set anew)."""
_FINGERPRINTS: dict[tuple[tuple[str, int, int], int], str] = {}
"""Fingerprints of the records a benchmark scores, by set version and limit (hashed once per process)."""


def _set_key(ctx: Context, name: str) -> tuple[str, int, int]:
    path = ctx.set_paths[name]
    st = Path(path).stat()
    return (str(path), st.st_mtime_ns, st.st_size)


def records_of(ctx: Context, name: str) -> list[Record]:
    """The records of data set `name` (read once per process and version of its file)."""
    key = _set_key(ctx, name)
    if key not in _SETS:
        _SETS[key] = read_set(Path(key[0]), ctx.cfg.data.names()[name])
    return _SETS[key]


# ---------------------------------------------------------------------------------------------------------------
# Selections


@dataclass(frozen=True)
class SelectTask:
    """One selection run.

    Attributes:
        method: Method or variant name.
        seed: Selection seed.
        k: Examples to select; None: the method's own default (a band method's whole band).
    """

    method: str
    seed: int
    k: int | None

    @property
    def dirname(self) -> str:
        return f"{self.method}__s{self.seed}__" + (BAND if self.k is None else f"k{self.k}")

    @property
    def label(self) -> str:
        return f"select {self.method} (seed {self.seed}, {'band' if self.k is None else self.k})"


class PeriodicFlush:
    """Calls `flush` on a daemon thread every `every` seconds from `start` until `stop`, so a long unit leaves
    its record on disk if the process is killed."""

    def __init__(self, flush: Callable[[], Any], every: float) -> None:
        self._flush, self.every = flush, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> PeriodicFlush:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self._flush()

    def stop(self) -> bool:
        """Stop and join the thread; False when it was stopped already."""
        if self._stop.is_set():
            return False
        self._stop.set()
        self._thread.join()
        return True


class SpentLedger:
    """Wall and CPU seconds of one unit of work summed over sittings (module docstring).

    ``with SpentLedger(path) as spent:`` adds this sitting to the totals `path` holds and rewrites them every
    `every` seconds and on exit; ``spent.totals()`` gives ``{"seconds", "cpu_seconds", "sittings"}`` so far.
    """

    def __init__(self, path: Path, every: float = 15.0) -> None:
        self.path = path
        self.before = {"seconds": 0.0, "cpu_seconds": 0.0, "sittings": 0}
        self._flusher = PeriodicFlush(self._write, every)

    def __enter__(self) -> SpentLedger:
        if self.path.exists():
            old = json.loads(self.path.read_text())
            self.before = {k: old.get(k, 0) for k in self.before}
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        self._flusher.start()
        return self

    def totals(self) -> dict[str, Any]:
        return {
            "seconds": round(self.before["seconds"] + time.perf_counter() - self.wall0, 3),
            "cpu_seconds": round(self.before["cpu_seconds"] + time.process_time() - self.cpu0, 3),
            "sittings": int(self.before["sittings"]) + 1,
        }

    def _write(self) -> None:
        write_json_atomic(self.path, self.totals())

    def __exit__(self, *exc: Any) -> None:
        self._flusher.stop()
        self._write()


def run_selection(ctx: Context, task: SelectTask) -> dict[str, Any]:
    """Select with `task`'s method (cached): returns its ``bench-selection.json`` (``topk``: whether the
    selection is the top-k of the scores; ``seconds``, ``cpu_seconds``: its cost; ``n_selected``), or
    ``{"unavailable": reason}`` for a method this version of gradsift does not provide."""
    from gradsift.pipeline import SelectConfig, run_select

    cfg = ctx.cfg
    base = cfg.base_method(task.method)
    options = cfg.method_options(task.method)
    d = ctx.out / "select" / task.dirname
    marker = d / "bench-selection.json"
    ledger = d.parent / f"{task.dirname}.spent.json"
    if marker.exists():
        meta = json.loads(marker.read_text())
        if meta.get("method") == base and meta.get("options") == json.loads(json.dumps(options, default=str)):
            return meta
        shutil.rmtree(d)  # a variant's options changed: its selection is stale
        ledger.unlink(missing_ok=True)
    cache = ctx.out / "cache" / ((cfg.cache_owner(task.method) or task.method) if cfg.select_cache == "method" else "")
    settings = {k: v for k, v in cfg.select.items() if k != "options"}
    scfg = SelectConfig(
        pool=ctx.set_paths["pool"],
        targets=ctx.set_paths.get("targets"),
        out=str(d),
        methods=[base],
        budget=None if task.k is None else str(task.k),
        kind=cfg.kind,
        model=ctx.models["base"],
        dtype=cfg.dtype,
        device=cfg.device,
        seed=task.seed,
        cache_dir=str(cache),
        pool_format="pair" if cfg.kind == "pair" else "messages",
        options=options,
        **settings,
    )
    d.parent.mkdir(parents=True, exist_ok=True)
    try:
        with SpentLedger(ledger) as spent, costs.job(task.dirname):
            res = run_select(scfg)
            charged = costs.charged()
    except NotImplementedError as e:
        ledger.unlink(missing_ok=True)  # after the ledger's last write: nothing of a method not provided is kept
        return {"unavailable": str(e)}
    meta = {
        "method": base,
        "options": json.loads(json.dumps(options, default=str)),
        "topk": res.scores[base].selected is None,
        "n_selected": len(res.selections[base]),
        **spent.totals(),
        # cached steps another selection computed (costs.py): part of this method's stand-alone cost
        "reused": charged,
    }
    write_json_atomic(marker, meta)
    ledger.unlink()
    return meta


# ---------------------------------------------------------------------------------------------------------------
# Cells


@dataclass
class Cell:
    """One trained (or untrained) model of the grid.

    Attributes:
        method: Method, variant or baseline name.
        budget: Budget label (``5%``, ``band``; ``100%`` for full, ``epoch`` for full-epoch, ``0`` untrained).
        k: The budget as a count.
        seed: Training seed.
        rows: Pool rows trained on; None: not trained.
        lr: Learning rate (None: the config's).
        model: Which prepared model it starts from (`Context.models`).
        epoch: Train one epoch instead of ``train.max_steps`` steps (full-epoch).
    """

    method: str
    budget: str
    k: int
    seed: int
    rows: list[int] | None = None
    lr: float | None = None
    model: str = "base"
    epoch: bool = False

    @property
    def name(self) -> str:
        if self.rows is None:
            return self.method
        tag = "band" if self.budget == BAND else "k"
        return f"{self.method}__{tag}{self.k}__s{self.seed}" + (f"__lr{self.lr:g}" if self.lr is not None else "")


@dataclass(frozen=True)
class CellTask:
    """A cell and the benchmarks to score it on."""

    cell: Cell
    benchmarks: tuple[BenchmarkSpec, ...]

    @property
    def label(self) -> str:
        return self.cell.name


def _eval_records(ctx: Context, b: BenchmarkSpec) -> list[Record]:
    """The records benchmark `b` scores (its set, cut to its limit)."""
    records = records_of(ctx, b.data)
    return records[: b.limit] if b.limit else records


def _eval_fingerprint(ctx: Context, b: BenchmarkSpec) -> str:
    """`fingerprint` of `_eval_records` (computed once per set version and limit)."""
    key = (_set_key(ctx, b.data), b.limit)
    if key not in _FINGERPRINTS:
        _FINGERPRINTS[key] = fingerprint(_eval_records(ctx, b))
    return _FINGERPRINTS[key]


def _stored(ctx: Context, path: Path, b: BenchmarkSpec) -> dict[str, Any] | None:
    """A stored result of `b` with its settings, on the records it scores now, or None."""
    if not path.exists():
        return None
    result = json.loads(path.read_text())
    same = result.get("data_fingerprint") == _eval_fingerprint(ctx, b)
    return result if same and result.get("benchmark_identity") == b.identity() else None


def run_cell(ctx: Context, task: CellTask) -> dict[str, Any]:
    """Train the cell (resumed, or reused when done) and score it on each benchmark not yet scored with the
    same settings; returns its row of the results table. A cell whose selection changed is redone."""
    cell, cfg = task.cell, ctx.cfg
    d = ctx.out / "cells" / cell.name
    done = d / "cell.json"
    prev = json.loads(done.read_text()) if done.exists() else None
    if prev is not None and prev.get("rows") != cell.rows:
        # the selection changed (its cache was deleted and recomputed): this cell's model is stale
        shutil.rmtree(d)
        prev = None
    trained = cell.rows is not None
    wanted = [b for b in task.benchmarks if trained or b.kind is not TaskKind.PREFERENCE]
    results = {b.name: r for b in wanted if (r := _stored(ctx, d / "eval" / f"{b.name}.json", b)) is not None}
    if prev is not None and len(results) == len(wanted):
        return _row(ctx, cell, prev["train"], results, task.benchmarks)
    import gc

    import torch

    from gradsift.model.load import load_model

    d.mkdir(parents=True, exist_ok=True)
    lm = load_model(cfg.model_settings(ctx.models[cell.model]))
    info: dict[str, Any] = {}
    if trained:
        lm, info = _train(ctx, cell, lm, d)
        if prev is not None:
            info = prev["train"]  # the run was reused: keep what training it took when it ran
    for b in wanted:
        if b.name not in results:
            results[b.name] = _evaluate(ctx, b, lm, d / "eval" / f"{b.name}.json")
    write_json_atomic(done, {"rows": cell.rows, "train": info})
    del lm
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the next cell loads a fresh model copy
    return _row(ctx, cell, info, results, task.benchmarks)


def _train(ctx: Context, cell: Cell, lm: Any, d: Path) -> tuple[Any, dict[str, Any]]:
    import dataclasses

    from gradsift.training.run import run_train

    assert cell.rows is not None
    cfg = ctx.cfg
    t0, cpu0 = time.perf_counter(), time.process_time()
    pool = records_of(ctx, "pool")
    records = [pool[i] for i in cell.rows]
    sel_path = d / "selection.jsonl"
    if not sel_path.exists():
        write_jsonl(sel_path, [record_row(r) for r in records])
    settings: dict[str, Any] = {"seed": cell.seed, **cfg.train}
    if cell.lr is not None:
        settings["lr"] = cell.lr
    if cell.epoch:
        settings.update(max_steps=-1, epochs=1.0)
    tc = TrainConfig(
        data=str(sel_path),
        out=str(d / "train"),
        kind=cfg.kind,
        model=ctx.models[cell.model],
        dtype=cfg.dtype,
        device=cfg.device,
        # TRL prints every logged step as a dict without its progress bar; the bar is one line per cell
        progress=True,
        **settings,
    )
    # every DPO cell of the grid has the same reference (the base model, adapter off): each pair scored once
    reference = ctx.out / "cache" / "train-reference" / settings_hash({"model": lm.fingerprint}, 12)
    result = run_train(tc, records=records, loaded=lm, reference_cache=reference)  # type: ignore[arg-type]
    log_loss = json.loads((d / "train" / "result.json").read_text()).get("train_loss")
    info = {
        "train_steps": result.global_step,
        "train_loss": log_loss,
        "lr": tc.lr,
        "train_s": round(time.perf_counter() - t0, 3),
        "train_cpu_s": round(time.process_time() - cpu0, 3),
    }
    return dataclasses.replace(lm, model=result.model), info


def _evaluate(ctx: Context, b: BenchmarkSpec, lm: Any, path: Path) -> dict[str, Any]:
    from gradsift.evaluation.run import run_evaluate
    from gradsift.evaluation.tasks import write_results

    t0, cpu0 = time.perf_counter(), time.process_time()
    records, data_fingerprint = _eval_records(ctx, b), _eval_fingerprint(ctx, b)
    if b.kind is not TaskKind.PREFERENCE:
        records = [as_example(r) for r in records]
    cfg = b.eval_config(data=ctx.set_paths[b.data], out=None, progress=ctx.cfg.progress)
    reference = None
    if b.kind is TaskKind.PREFERENCE:
        # every adapter of the grid has the same reference (its base model, adapter off): scored once
        key = settings_hash({"model": lm.fingerprint, "data": data_fingerprint, "benchmark": b.identity()}, 12)
        reference = ctx.out / "cache" / "eval-reference" / f"{b.name}-{key}.npy"
        reference.parent.mkdir(parents=True, exist_ok=True)
    result = run_evaluate(cfg, records=records, loaded=lm, reference_cache=reference)  # type: ignore[arg-type]
    result["benchmark_identity"] = b.identity()
    result["data_fingerprint"] = data_fingerprint
    result["bench_seconds"] = round(time.perf_counter() - t0, 3)
    result["bench_cpu_seconds"] = round(time.process_time() - cpu0, 3)
    write_results(path, result)
    return result


def _row(
    ctx: Context, cell: Cell, info: dict[str, Any], results: dict[str, Any], specs: Sequence[BenchmarkSpec]
) -> dict[str, Any]:
    n_pool = len(records_of(ctx, "pool"))
    row: dict[str, Any] = {
        "method": cell.method,
        "budget": cell.budget,
        "k": cell.k,
        "seed": cell.seed,
        "n_selected": len(cell.rows) if cell.rows is not None else 0,
        "sdf": len(cell.rows) / n_pool if cell.rows else 0.0,
        "cell": cell.name,
        **info,
    }
    for b in specs:
        if b.name not in results:
            row[b.column] = None  # the untrained model is its own preference reference: every margin is 0
            continue
        for key, value in results[b.name]["metrics"].items():
            if isinstance(value, bool | int | float):
                row[f"{b.name}.{key}"] = float(value)
    row["eval_s"] = round(sum(float(r.get("bench_seconds", 0.0)) for r in results.values()), 3)
    row["eval_cpu_s"] = round(sum(float(r.get("bench_cpu_seconds", 0.0)) for r in results.values()), 3)
    return row


# ---------------------------------------------------------------------------------------------------------------
# Running units, here or in workers


def watch_parent(parent: int, every: float = 2.0) -> None:
    """End this worker when the bench process `parent` is gone (killed): a unit nobody waits for would keep
    training and hold its cell's lock against the rerun."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _init_worker(threads: int, progress: bool, parent: int) -> None:
    watch_parent(parent)
    import torch

    torch.set_num_threads(threads)
    if not progress:
        # one line per unit instead of the data-processing and weight-loading bars of every stage
        from datasets.utils.logging import disable_progress_bar
        from transformers.utils import logging as hf_logging

        disable_progress_bar()
        hf_logging.disable_progress_bar()


def _timed(fn: Callable[[Context, Any], Any], ctx: Context, task: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    return fn(ctx, task), time.perf_counter() - t0


class Workers:
    """The processes that run a bench's units side by side: none with one worker (units run here), else a
    pool of ``workers`` spawned processes, started at the first use. Each process runs one unit and is then
    replaced, so the memory a unit held (a DPO step's logits take gigabytes) goes back to the system before
    the next one; the price is importing the stack again per unit (seconds, against minutes per unit). Use as
    a context manager."""

    def __init__(self, workers: int, progress: bool) -> None:
        self.workers, self.progress = workers, progress
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            threads = max(1, (os.cpu_count() or 1) // self.workers)
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=get_context("spawn"),
                initializer=_init_worker,
                initargs=(threads, self.progress, os.getpid()),
                max_tasks_per_child=1,
            )
        return self._pool

    def run_all(
        self,
        ctx: Context,
        tasks: Sequence[Any],
        fn: Callable[[Context, Any], Any],
        on_done: Callable[[Any, Any, float], None] | None = None,
    ) -> list[Any]:
        """Run ``fn(ctx, task)`` for every task, here (one worker, or one task) or in the worker processes.

        Args:
            ctx: The run's context.
            tasks: Units of work (each with a ``label``).
            fn: A module-level function (workers import it by name).
            on_done: Called in this process as each task finishes: ``on_done(task, result, seconds)``.

        Returns:
            The results, in task order.

        Raises:
            Exception: The first error a task raised (the tasks not started yet are cancelled).
        """
        results: list[Any] = [None] * len(tasks)
        if self.workers <= 1 or len(tasks) <= 1:
            for i, task in enumerate(tasks):
                results[i], seconds = _timed(fn, ctx, task)
                if on_done is not None:
                    on_done(task, results[i], seconds)
            return results
        pool = self.pool()
        started = {pool.submit(_timed, fn, ctx, task): i for i, task in enumerate(tasks)}
        pending = set(started)
        try:
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    i = started[fut]
                    results[i], seconds = fut.result()
                    if on_done is not None:
                        on_done(tasks[i], results[i], seconds)
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise
        return results
