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

import copy
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import math
import os
import random
import shutil
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from gradsift.atomic import write_bytes_atomic, write_json_atomic, write_text_atomic
from gradsift.data.formats import FieldMap
from gradsift.data.load import OnInvalid, load_examples, load_pairs, write_jsonl
from gradsift.data.records import Example, Kind, Pair
from gradsift.evaluation.run import EvaluateConfig, read_mc_items, read_prompts
from gradsift.evaluation.selector_metrics import (
    GRADSIFT_METHODS,
    BenchmarkScore,
    MethodPoint,
    efficiency_table,
    gradsift_feasibility,
)
from gradsift.evaluation.tasks import MCItem, TaskKind
from gradsift.machine import machine_info
from gradsift.model.load import DType, ModelSettings
from gradsift.score.base import Method
from gradsift.selection.budget import Budget
from gradsift.training.run import TrainConfig

log = logging.getLogger(__name__)

SetKind = Literal["sft", "pair", "prompts", "mc"]
Record = Example | Pair | MCItem

BASELINES = ("full", "base", "original")
"""Rows that are not selections: train on the whole pool, the untrained model, the model before `prepare`."""

PRIMARY_METRICS: dict[TaskKind, tuple[str, bool]] = {
    TaskKind.GSM8K: ("exact_match", True),
    TaskKind.BBH: ("exact_match", True),
    TaskKind.MULTIPLE_CHOICE: ("accuracy", True),
    TaskKind.REFUSAL: ("refusal_rate", True),
    TaskKind.UTILITY: ("mean_loss", False),
    TaskKind.PREFERENCE: ("accuracy", True),
    TaskKind.TARGET_LOSS: ("mean_loss", False),
}
"""Default primary metric of each task kind and whether higher is better."""

METRIC_DIRECTIONS = {
    "exact_match": True,
    "macro_exact_match": True,
    "accuracy": True,
    "refusal_rate": True,
    "mean_reward_margin": True,
    "mean_margin": True,
    "mean_loss": False,
    "token_mean_loss": False,
}
"""Whether higher is better, for the task metrics a benchmark may choose as its primary one."""

# Fields of the stage configs that a bench sets itself, per cell or from its top level.
_TRAIN_OWN = {"data", "out", "kind", "model", "dtype", "device", "resume", "overwrite", "progress"}
_EVAL_OWN = {"task", "data", "out", "model", "adapter", "dtype", "device", "progress"}
_SELECT_OWN = {"pool", "out", "targets", "methods", "budget", "kind", "model", "dtype", "device", "seed"}
_SELECT_OWN |= {"cache_dir", "overwrite", "pool_format", "targets_format", "pool_limit", "targets_limit"}
_SELECT_OWN |= {"on_invalid"}


# ---------------------------------------------------------------------------------------------------------------
# Configuration


def _fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if f.init}


def _from_dict(cls: type, values: Any, where: str) -> Any:
    """Build dataclass `cls` from a mapping, naming unknown keys and the config section they are in."""
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(values).__name__}")
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(set(values) - _fields(cls))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(_fields(cls)))}")
    return cls(**values)


@dataclass
class Source:
    """One data file contributing records to a set.

    Attributes:
        path: File, saved dataset directory or ``hf:name`` (relative paths: from the config file's folder).
        name: Label of the source: prefix of its record ids (``name/id``) and its ``origin``; default the file
            name without suffixes.
        fmt: Force the record format (see `gradsift.data.formats.Format`).
        split: Part of a source with named parts.
        fields: Column names that differ from the format's defaults (`gradsift.data.formats.FieldMap`).
        task: Task label for every record (default: the record's own label; FLAN files: their file name).
        offset: Records skipped first (after `max_chars`), so two sets can take disjoint parts of one file.
        limit: Records taken (0: all), after `max_chars` and `offset`.
        take: ``random`` (a seeded sample; the bench's ``data_seed``) or ``first`` records.
        response: SFT sets only: ``rejected`` trains on a pair's rejected response (e.g. harmful completions);
            default ``chosen``.
        max_chars: Leave out records whose text (prompt and responses) is longer than this (0: no limit); keeps
            CPU runs short.
        prompt_field: Prompt sets: the prompt column when none of the usual names.
        on_invalid: ``raise`` at the first malformed record or ``skip`` them (public pools have a few).
    """

    path: str
    name: str | None = None
    fmt: str | None = None
    split: str | None = None
    fields: dict[str, str] | None = None
    task: str | None = None
    offset: int = 0
    limit: int = 0
    take: Literal["random", "first"] = "random"
    response: Literal["chosen", "rejected"] = "chosen"
    max_chars: int = 0
    prompt_field: str | None = None
    on_invalid: OnInvalid = "raise"

    def __post_init__(self) -> None:
        if not isinstance(self.path, str) or not self.path:
            raise ValueError("a source needs a path")
        if self.name is None:
            base = Path(self.path).name
            for suffix in (".gz", ".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt"):
                base = base.removesuffix(suffix)
            self.name = base or self.path
        if "/" in self.name:
            raise ValueError(f"source name {self.name!r} must not contain '/' (it prefixes record ids)")
        if self.limit < 0 or self.max_chars < 0 or self.offset < 0:
            raise ValueError(f"source {self.name}: offset, limit and max_chars must be >= 0 (0: none)")
        if self.take not in ("random", "first"):
            raise ValueError(f"source {self.name}: take must be 'random' or 'first', got {self.take!r}")
        if self.response not in ("chosen", "rejected"):
            raise ValueError(f"source {self.name}: response must be 'chosen' or 'rejected', got {self.response!r}")
        if self.on_invalid not in ("raise", "skip"):
            raise ValueError(f"source {self.name}: on_invalid must be 'raise' or 'skip', got {self.on_invalid!r}")
        self.field_map()

    def field_map(self) -> FieldMap | None:
        return FieldMap(**self.fields) if self.fields else None


@dataclass
class DataSpec:
    """A set of records mixed from sources.

    Attributes:
        sources: Where the records come from.
        kind: ``sft`` (examples), ``pair`` (preference pairs), ``prompts`` (prompts only, e.g. harmful
            requests) or ``mc`` (multiple-choice items).
        shuffle: Shuffle the mixed records (seeded), so limits and the held-out split cut across sources.
        limit: Records kept after mixing (0: all).
        holdout: Targets only: this many records (taken from the end, after the shuffle) form the ``heldout``
            set for evaluation and are not given to the selectors.
    """

    sources: list[Source]
    kind: SetKind = "sft"
    shuffle: bool = True
    limit: int = 0
    holdout: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.sources, list) or not self.sources:
            raise ValueError("a data set needs at least one source")
        self.sources = [s if isinstance(s, Source) else _from_dict(Source, s, "source") for s in self.sources]
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"source names repeat ({names}); give each source a distinct name")
        if self.kind not in ("sft", "pair", "prompts", "mc"):
            raise ValueError(f"data set kind must be sft, pair, prompts or mc, got {self.kind!r}")
        if self.limit < 0 or self.holdout < 0:
            raise ValueError("limit and holdout must be >= 0")
        for s in self.sources:
            if s.response == "rejected" and self.kind != "sft":
                raise ValueError(f"source {s.name}: response 'rejected' applies to sft sets, not {self.kind}")


@dataclass
class DataConfig:
    """The bench's data.

    Attributes:
        pool: The candidate pool (kind ``sft`` or ``pair``, as the bench's `kind`).
        targets: Target examples given to target-aware selectors; `holdout` of them are kept for evaluation.
        sets: Further named sets for the benchmarks.
    """

    pool: DataSpec
    targets: DataSpec | None = None
    sets: dict[str, DataSpec] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.pool, dict):
            self.pool = _from_dict(DataSpec, self.pool, "data.pool")
        if isinstance(self.targets, dict):
            self.targets = _from_dict(DataSpec, self.targets, "data.targets")
        if not isinstance(self.sets, dict):
            raise ValueError("data.sets must map set names to data sets")
        self.sets = {
            str(k): v if isinstance(v, DataSpec) else _from_dict(DataSpec, v, f"data.sets.{k}")
            for k, v in self.sets.items()
        }
        reserved = {"pool", "targets", "heldout"} & set(self.sets)
        if reserved:
            raise ValueError(f"data.sets may not be named {sorted(reserved)}: those names are the bench's own")
        if self.pool.holdout:
            raise ValueError("data.pool.holdout: only the targets have a held-out part")
        for name, spec in self.sets.items():
            if spec.holdout:
                raise ValueError(f"data.sets.{name}.holdout: only the targets have a held-out part")

    def names(self) -> dict[str, SetKind]:
        """Every set name a benchmark may use, with its kind."""
        out: dict[str, SetKind] = {"pool": self.pool.kind}
        if self.targets is not None:
            out["targets"] = self.targets.kind
            if self.targets.holdout:
                out["heldout"] = self.targets.kind
        out.update({k: v.kind for k, v in self.sets.items()})
        return out


@dataclass
class HarmfulFinetune:
    """A short fine-tune on harmful completions, merged into the model before anything else.

    Attributes:
        data: The harmful examples (an sft set; e.g. HH-RLHF pairs with ``response: rejected``).
        train: `TrainConfig` fields for this fine-tune (epochs, lr, lora_rank, max_steps, ...).
    """

    data: DataSpec
    train: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.data, dict):
            self.data = _from_dict(DataSpec, self.data, "prepare.harmful_finetune.data")
        if self.data.kind != "sft":
            raise ValueError("prepare.harmful_finetune.data must be an sft set")
        _check_train(self.train, "sft", "prepare.harmful_finetune.train")


@dataclass
class PrepareConfig:
    """Steps run once before selection.

    Attributes:
        harmful_finetune: Break the model's refusals first (see `HarmfulFinetune`).
    """

    harmful_finetune: HarmfulFinetune | None = None

    def __post_init__(self) -> None:
        if isinstance(self.harmful_finetune, dict):
            self.harmful_finetune = _from_dict(HarmfulFinetune, self.harmful_finetune, "prepare.harmful_finetune")


@dataclass
class BenchmarkSpec:
    """One benchmark every trained model is scored on.

    Attributes:
        name: Column prefix in the results (``<name>.<metric>``).
        task: Task kind (`gradsift.evaluation.tasks.TaskKind` value or alias such as ``target-loss``).
        data: Name of the set it reads (``heldout``, ``targets``, ``pool`` or a name in ``data.sets``).
        metric: The metric PIR uses; default per task (exact match, accuracy, refusal rate, mean loss).
        higher_is_better: Direction of `metric`; default per task.
        limit: Records evaluated (0: all of the set).
        settings: Further `gradsift.evaluation.run.EvaluateConfig` fields (max_new_tokens, fewshot, ...).
    """

    name: str
    task: str
    data: str
    metric: str | None = None
    higher_is_better: bool | None = None
    limit: int = 0
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name or "." in self.name or "/" in self.name:
            raise ValueError(f"benchmark name {self.name!r} must be non-empty without '.' or '/'")
        own = sorted(set(self.settings) & _EVAL_OWN)
        if own:
            raise ValueError(f"benchmark {self.name}: the bench sets {own} itself")
        cfg = self.eval_config(data="-", out=None)
        default_metric, default_dir = PRIMARY_METRICS[cfg.kind]
        if self.metric is None:
            self.metric = default_metric
            self.higher_is_better = default_dir if self.higher_is_better is None else self.higher_is_better
        elif self.higher_is_better is None:
            if self.metric not in METRIC_DIRECTIONS:
                raise ValueError(
                    f"benchmark {self.name}: say whether {self.metric} is better higher (higher_is_better)"
                )
            self.higher_is_better = METRIC_DIRECTIONS[self.metric]
        if self.limit < 0:
            raise ValueError(f"benchmark {self.name}: limit must be >= 0 (0: all)")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> BenchmarkSpec:
        """Read a flat mapping: the attributes above, every other key an `EvaluateConfig` field."""
        if not isinstance(values, dict):
            raise ValueError(f"a benchmark is a mapping, got {values!r}")
        values = {str(k).replace("-", "_"): v for k, v in values.items()}
        own = {k: values.pop(k) for k in list(values) if k in _fields(cls) and k != "settings"}
        settings = {**values.pop("settings", {}), **values}
        unknown = sorted(set(settings) - _fields(EvaluateConfig))
        if unknown:
            raise ValueError(f"benchmark {own.get('name')}: unknown field(s) {', '.join(unknown)}")
        for key in ("name", "task", "data"):
            if key not in own:
                raise ValueError(f"benchmark {own.get('name', values)}: missing {key!r}")
        return cls(**own, settings=settings)

    @property
    def kind(self) -> TaskKind:
        return self.eval_config(data="-", out=None).kind

    @property
    def column(self) -> str:
        return f"{self.name}.{self.metric}"

    def eval_config(self, data: str, out: str | None, progress: bool = False) -> EvaluateConfig:
        return EvaluateConfig(task=self.task, data=data, out=out, progress=progress, **self.settings)

    def identity(self) -> str:
        """Hash of what decides this benchmark's numbers (a stored result with another hash is redone)."""
        payload = {k: v for k, v in asdict(self).items() if k not in ("metric", "higher_is_better")}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _check_train(values: Any, kind: str, where: str) -> None:
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping of training settings")
    own = sorted(set(values) & _TRAIN_OWN)
    if own:
        raise ValueError(f"{where}: the bench sets {own} itself")
    unknown = sorted(set(values) - _fields(TrainConfig))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)}")
    TrainConfig(data="-", out="-", kind=kind, **values)  # type: ignore[arg-type]


@dataclass
class BenchConfig:
    """A selector comparison: methods x budgets x seeds on one pool and one target set.

    Attributes:
        name: Name of the scenario (report title).
        out: Working directory (data, selections, adapters, evaluations; resumable).
        results: Where the tables and the report go (default `out`).
        kind: ``sft`` (SFT on examples) or ``pair`` (DPO on preference pairs).
        model: ``builtin``, a local directory, a ``.gguf`` file or a hub id.
        dtype: Model dtype.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        methods: Selection methods (`gradsift.score.base.Method` values); ``random`` is needed for the default
            efficiency reference line.
        budgets: Budgets (counts, fractions or percentages of the pool).
        seeds: Seeds of the grid.
        seeded_methods: Methods run with every seed; the others run with the first seed only.
        baselines: Subset of ``full`` (train on the whole pool), ``base`` (no training) and ``original``
            (the model before `prepare`; needs a prepare step).
        data_seed: Seed of the data mixing (samples, shuffles, held-out split).
        data: The pool, targets and evaluation sets.
        prepare: Steps run once before selection.
        select: `gradsift.pipeline.SelectConfig` fields for every selection (max_length, batch_tokens,
            options, ...).
        train: `gradsift.training.run.TrainConfig` fields for every fine-tune (epochs, lr, batch_size, ...).
        benchmarks: What every trained model is scored on.
        references: The two methods whose (SDF, PIR) points define the efficiency line.
        overwrite: Replace a run with other settings in `out`.
        progress: Progress bars of evaluation (training always shows one; the bench prints a line per cell).
        report: Write the HTML and Markdown report (figures take a few seconds); the tables are always written.
    """

    name: str
    out: str
    data: DataConfig
    benchmarks: list[BenchmarkSpec]
    methods: list[str]
    budgets: list[str]
    results: str | None = None
    kind: Literal["sft", "pair"] = "sft"
    model: str = "builtin"
    dtype: DType = "auto"
    device: str = "auto"
    seeds: list[int] = field(default_factory=lambda: [0])
    seeded_methods: list[str] = field(default_factory=lambda: ["random"])
    baselines: list[str] = field(default_factory=lambda: ["full", "base"])
    data_seed: int = 0
    prepare: PrepareConfig | None = None
    select: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    references: list[str] = field(default_factory=lambda: ["random", "full"])
    overwrite: bool = False
    progress: bool = False
    report: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.data, dict):
            self.data = _from_dict(DataConfig, self.data, "data")
        if isinstance(self.prepare, dict):
            self.prepare = _from_dict(PrepareConfig, self.prepare, "prepare")
        if self.kind not in ("sft", "pair"):
            raise ValueError(f"kind must be 'sft' or 'pair', got {self.kind!r}")
        self.methods = [m.value for m in Method.parse_list(self.methods)]
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods repeat: {self.methods}")
        if not isinstance(self.budgets, list) or not self.budgets:
            raise ValueError("budgets must be a non-empty list such as ['5%', '10%'] or [25, 50]")
        self.budgets = [str(b) for b in self.budgets]
        for budget in self.budgets:
            Budget.parse(budget)
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be a non-empty list of distinct integers, got {self.seeds}")
        self.seeded_methods = [m.value for m in Method.parse_list(self.seeded_methods)] if self.seeded_methods else []
        bad = sorted(set(self.baselines) - set(BASELINES))
        if bad:
            raise ValueError(f"unknown baseline(s) {bad}; choose from {', '.join(BASELINES)}")
        if "original" in self.baselines and (self.prepare is None or self.prepare.harmful_finetune is None):
            raise ValueError("the 'original' baseline is the model before a prepare step, and there is none")
        if self.data.pool.kind != self.kind:
            raise ValueError(f"data.pool.kind is {self.data.pool.kind!r} but the bench's kind is {self.kind!r}")
        if self.data.targets is not None and self.data.targets.kind not in ("sft", "pair"):
            raise ValueError("data.targets must be an sft or pair set (targets have reference answers)")
        self.benchmarks = [b if isinstance(b, BenchmarkSpec) else BenchmarkSpec.from_dict(b) for b in self.benchmarks]
        if not self.benchmarks:
            raise ValueError("at least one benchmark is needed")
        names = [b.name for b in self.benchmarks]
        if len(set(names)) != len(names):
            raise ValueError(f"benchmark names repeat: {names}")
        sets = self.data.names()
        for b in self.benchmarks:
            if b.data not in sets:
                raise ValueError(f"benchmark {b.name}: no data set {b.data!r}; sets: {', '.join(sorted(sets))}")
            _check_set_kind(b, sets[b.data])
        if len(self.references) != 2 or len(set(self.references)) != 2:
            raise ValueError(f"references must name two different methods, got {self.references}")
        own = sorted(set(self.select) & _SELECT_OWN)
        if own:
            raise ValueError(f"select: the bench sets {own} itself")
        from gradsift.pipeline import SelectConfig

        unknown = sorted(set(self.select) - _fields(SelectConfig))
        if unknown:
            raise ValueError(f"select: unknown field(s) {', '.join(unknown)}")
        _check_train(self.train, self.kind, "train")
        ModelSettings(model=self.model, dtype=self.dtype, device=self.device)

    @classmethod
    def from_yaml(
        cls, path: str | Path, size: str | None = None, overrides: dict[str, Any] | None = None
    ) -> BenchConfig:
        """Read a bench config file.

        Relative paths in it (``out``, ``results``, ``model`` when it is a path, source paths) are taken from the
        file's folder. A ``sizes:`` section holds named overrides (``gpu``, ``quick``, ...) merged onto the file
        with `merge_overrides`; with `size`, ``out`` and ``results`` get a ``-<size>`` suffix unless the size
        sets them, and so does ``name`` (default: the file name without suffix).

        Args:
            path: The YAML file.
            size: A name in its ``sizes`` section.
            overrides: Final overrides (command-line flags), merged last.

        Raises:
            FileNotFoundError: No such file.
            ValueError: Malformed YAML, an unknown size or field, or invalid settings.
        """
        import yaml

        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"{p}: bench config not found")
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{p}: not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{p}: a bench config is a mapping of settings")
        sizes = raw.pop("sizes", {}) or {}
        if size is not None:
            if size not in sizes:
                raise ValueError(f"{p}: no size {size!r}; sizes: {', '.join(sorted(sizes)) or 'none'}")
            override = sizes[size]
            raw.setdefault("name", p.stem)
            for key in ("name", "out", "results"):
                if key in raw and key not in override:
                    raw[key] = f"{raw[key]}-{size}"
            raw = merge_overrides(raw, override)
        if overrides:
            raw = merge_overrides(raw, overrides)
        base = p.resolve().parent
        raw = _resolve_paths(raw, base)
        raw.setdefault("name", p.stem)
        for key in ("out", "data", "benchmarks", "methods", "budgets"):
            if key not in raw:
                raise ValueError(f"{p}: missing {key!r}")
        return _from_dict(cls, raw, str(p))

    def model_settings(self, model: str | None = None) -> ModelSettings:
        return ModelSettings(model=model or self.model, dtype=self.dtype, device=self.device)

    def results_dir(self) -> Path:
        return Path(self.results or self.out)

    def identity(self) -> dict[str, Any]:
        """What decides the selections and trained adapters; another identity in `out` is refused."""
        return json.loads(
            json.dumps(
                {
                    "kind": self.kind,
                    "model": self.model,
                    "dtype": self.dtype,
                    "data_seed": self.data_seed,
                    "data": asdict(self.data),
                    "prepare": asdict(self.prepare) if self.prepare else None,
                    "select": self.select,
                    "train": self.train,
                },
                default=str,
            )
        )


def _check_set_kind(b: BenchmarkSpec, kind: SetKind) -> None:
    wanted: dict[TaskKind, tuple[SetKind, ...]] = {
        TaskKind.PREFERENCE: ("pair",),
        TaskKind.MULTIPLE_CHOICE: ("mc",),
        TaskKind.REFUSAL: ("prompts", "sft", "pair"),
    }
    ok = wanted.get(b.kind, ("sft", "pair"))
    if kind not in ok:
        raise ValueError(f"benchmark {b.name} ({b.kind.value}) needs a {' or '.join(ok)} set; {b.data} is {kind}")


def merge_overrides(base: Any, override: Any) -> Any:
    """Merge `override` onto `base`: mappings key by key (recursively), anything else replaced.

    One exception keeps size sections short: a mapping merged onto a list of named mappings (such as a data
    set's ``sources``) updates the items by name: ``{gsm8k: {limit: 100}}`` sets that source's limit.

    Raises:
        ValueError: A name in such a mapping matches no item.
    """
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for k, v in override.items():
            out[k] = merge_overrides(base[k], v) if k in base else v
        return out
    if isinstance(base, list) and isinstance(override, dict) and all(isinstance(x, dict) for x in base):
        by_name = {_item_name(x): i for i, x in enumerate(base)}
        out_list = list(base)
        for name, v in override.items():
            if name not in by_name:
                raise ValueError(f"override names {name!r}, but the list holds {sorted(by_name)}")
            out_list[by_name[name]] = merge_overrides(out_list[by_name[name]], v)
        return out_list
    return copy.deepcopy(override)


def _item_name(item: dict[str, Any]) -> str:
    if "name" in item:
        return str(item["name"])
    return Source(path=str(item.get("path", "?"))).name or "?"


def _resolve_paths(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    def fix(p: Any) -> Any:
        if not isinstance(p, str) or p.startswith("hf:") or Path(p).is_absolute():
            return p
        return str((base / p).resolve())

    def fix_spec(spec: Any) -> None:
        if isinstance(spec, dict):
            for s in spec.get("sources", []) or []:
                if isinstance(s, dict) and "path" in s:
                    s["path"] = fix(s["path"])

    raw = copy.deepcopy(raw)
    for key in ("out", "results"):
        if key in raw:
            raw[key] = fix(raw[key])
    model = raw.get("model")
    if isinstance(model, str) and model.startswith(("./", "../")):
        raw["model"] = fix(model)
    data = raw.get("data") or {}
    if isinstance(data, dict):
        fix_spec(data.get("pool"))
        fix_spec(data.get("targets"))
        for spec in (data.get("sets") or {}).values():
            fix_spec(spec)
    harmful = (
        ((raw.get("prepare") or {}).get("harmful_finetune") or {}) if isinstance(raw.get("prepare"), dict) else {}
    )
    if isinstance(harmful, dict):
        fix_spec(harmful.get("data"))
    for b in raw.get("benchmarks", []) or []:
        if isinstance(b, dict) and isinstance(b.get("fewshot"), str):
            b["fewshot"] = fix(b["fewshot"])
    return raw


# ---------------------------------------------------------------------------------------------------------------
# Data


def _text_length(r: Record) -> int:
    if isinstance(r, Pair):
        return sum(len(m["content"]) for m in r.prompt) + len(r.chosen) + len(r.rejected)
    if isinstance(r, MCItem):
        return len(r.question) + sum(len(c) for c in r.choices)
    return sum(len(m["content"]) for m in r.messages) + len(r.rejected or "")


def load_source(src: Source, kind: SetKind, seed: int) -> list[Record]:
    """The records one source contributes: read, labelled, filtered by length, offset, sampled, ids prefixed.

    Raises:
        DataError: The source is unreadable or malformed for the set's kind.
        ValueError: Fewer records than `limit` are left.
    """
    records: list[Any]
    if kind == "pair":
        records = load_pairs(src.path, fmt=src.fmt, fields=src.field_map(), split=src.split, on_invalid=src.on_invalid)
    elif kind == "mc":
        records = read_mc_items(src.path, src.split, src.on_invalid)
    elif kind == "prompts":
        records = read_prompts(src.path, src.prompt_field, src.split)
    elif src.response == "rejected":
        pairs = load_pairs(src.path, fmt=src.fmt, fields=src.field_map(), split=src.split, on_invalid=src.on_invalid)
        records = [
            Example(
                id=p.id,
                messages=[*p.prompt, {"role": "assistant", "content": p.rejected}],
                task=p.task,
                raw=p.raw,
                source=p.source,
                line=p.line,
            )
            for p in pairs
            if p.rejected.strip()
        ]
    else:
        records = load_examples(
            src.path,
            kind=Kind.TARGET,
            fmt=src.fmt,
            fields=src.field_map(),
            split=src.split,
            on_invalid=src.on_invalid,
        )
    if src.task is not None:
        for r in records:
            r.task = src.task
    if src.max_chars:
        records = [r for r in records if _text_length(r) <= src.max_chars]
    records = records[src.offset :]
    if src.limit:
        if len(records) < src.limit:
            raise ValueError(f"source {src.name}: limit {src.limit} but only {len(records)} records are left")
        if src.take == "random":
            keep = sorted(random.Random(f"{seed}:{src.name}").sample(range(len(records)), src.limit))
            records = [records[i] for i in keep]
        else:
            records = records[: src.limit]
    out: list[Record] = list(records)
    for r in out:
        r.id = f"{src.name}/{r.id}"
    return out


def build_set(spec: DataSpec, name: str, seed: int) -> tuple[list[Record], list[Record]]:
    """Mix a set's sources (shuffled with a seed of the set's name) and split off its held-out part.

    Returns:
        ``(records, heldout)``; `heldout` is empty unless ``spec.holdout``.

    Raises:
        ValueError: Repeated ids, or a holdout that leaves no records.
    """
    records: list[Record] = []
    for src in spec.sources:
        records.extend(load_source(src, spec.kind, seed))
    ids = Counter(r.id for r in records)
    repeated = [i for i, c in ids.items() if c > 1]
    if repeated:
        raise ValueError(f"data set {name}: ids repeat across its records: {repeated[:5]}")
    if spec.shuffle:
        random.Random(f"{seed}:{name}").shuffle(records)
    if spec.limit:
        records = records[: spec.limit]
    if spec.holdout:
        if spec.holdout >= len(records):
            raise ValueError(f"data set {name}: holdout {spec.holdout} leaves none of its {len(records)} records")
        return records[: -spec.holdout], records[-spec.holdout :]
    return records, []


def record_row(r: Record) -> dict[str, Any]:
    """A record as canonical JSON (read back by `read_set`)."""
    if isinstance(r, Pair):
        row: dict[str, Any] = {"id": r.id, "prompt": r.prompt, "chosen": r.chosen, "rejected": r.rejected}
    elif isinstance(r, MCItem):
        row = {"id": r.id, "question": r.question, "choices": r.choices, "answer": r.answer}
    else:
        row = {"id": r.id, "messages": r.messages}
        if r.rejected is not None:
            row["rejected"] = r.rejected
    if r.task is not None:
        row["task"] = r.task
    return row


def read_set(path: Path, kind: SetKind) -> list[Record]:
    """Read a set written by `prepare_data`."""
    if kind == "pair":
        return list(load_pairs(path, fmt="pair"))
    if kind == "mc":
        return list(read_mc_items(path))
    if kind == "prompts":
        return list(read_prompts(path))
    return list(load_examples(path, kind=Kind.TARGET, fmt="messages"))


def _fp(records: Sequence[Record]) -> str:
    h = hashlib.sha256()
    for r in records:
        h.update(json.dumps(record_row(r), sort_keys=True, ensure_ascii=False).encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------------------
# Results


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


@dataclass
class MethodSelection:
    """One method's selection, for the report.

    Attributes:
        method: Method name.
        budget: Number of examples asked for.
        seed: Seed of the selection.
        rows: Selected pool rows, in selection order.
        scores: Score of every pool row [N] (NaN: not selectable), or None for methods without scores.
    """

    method: str
    budget: int
    seed: int
    rows: list[int]
    scores: np.ndarray | None


@dataclass
class BenchmarkInfo:
    """A benchmark as the report shows it."""

    name: str
    task: str
    metric: str
    higher_is_better: bool
    n: int = 0

    @property
    def column(self) -> str:
        return f"{self.name}.{self.metric}"


@dataclass
class PoolItem:
    """A pool record as the report shows it (`response` holds both responses of a pair)."""

    id: str
    task: str | None
    prompt: str
    response: str


@dataclass
class ReportData:
    """Everything the report shows; built by `collect_report_data` or by hand (tests).

    Attributes:
        title: Scenario name.
        created: When the results were aggregated (ISO time, UTC).
        machine: Platform, CPU, GPU, library versions.
        settings: Scenario summary (model, kind, pool and target sizes, budgets, seeds, training).
        benchmarks: The benchmarks and their primary metrics.
        table: Results table (one row per cell), a pandas DataFrame.
        efficiency: Efficiency rows (see `BenchResult`).
        feasibility: Feasibility rows.
        pool: The pool's records [N].
        selections: The selection of each method at the largest budget and first seed.
        unavailable: Methods skipped, with the reason.
        notes: Caveats.
        references: The two methods whose points define the efficiency line.
    """

    title: str
    created: str
    machine: dict[str, str]
    settings: dict[str, Any]
    benchmarks: list[BenchmarkInfo]
    table: Any
    efficiency: list[dict[str, Any]]
    feasibility: list[dict[str, Any]]
    pool: list[PoolItem]
    selections: list[MethodSelection]
    unavailable: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    references: tuple[str, str] = ("random", "full")

    def task_shares(self) -> tuple[list[str], dict[str, dict[str, float]]]:
        """Task labels (by pool share, largest first) and the share of each in the pool and in each selection.

        Returns:
            ``(tasks, shares)`` with ``shares["pool"][task]`` and ``shares[method][task]`` in [0, 1].
        """
        labels = [p.task or "(none)" for p in self.pool]
        pool = Counter(labels)
        tasks = [t for t, _ in pool.most_common()]
        shares = {"pool": {t: pool[t] / max(len(labels), 1) for t in tasks}}
        for s in self.selections:
            c = Counter(labels[i] for i in s.rows)
            shares[s.method] = {t: c.get(t, 0) / max(len(s.rows), 1) for t in tasks}
        return tasks, shares

    def jaccard(self) -> tuple[list[str], np.ndarray]:
        """Jaccard overlap of every two methods' selections [M, M] (1 on the diagonal)."""
        names = [s.method for s in self.selections]
        sets = [set(s.rows) for s in self.selections]
        m = np.ones((len(sets), len(sets)))
        for i, a in enumerate(sets):
            for j, b in enumerate(sets):
                if i != j:
                    m[i, j] = len(a & b) / len(a | b) if a | b else float("nan")
        return names, m

    def random_jaccard(self) -> float | None:
        """Expected Jaccard overlap of two independent uniform selections of the largest budget."""
        n = len(self.pool)
        ks = [len(s.rows) for s in self.selections if s.method not in BASELINES]
        if not n or not ks:
            return None
        k = max(ks)
        inter = k * k / n
        return inter / (2 * k - inter) if k else None

    def extremes(self, method: str, n: int = 5) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
        """The `n` highest- and lowest-scored pool rows of a method: ``[(row, score)]`` each, best first."""
        sel = next(s for s in self.selections if s.method == method)
        if sel.scores is None:
            return [], []
        s = np.asarray(sel.scores, dtype=np.float64)
        ok = np.flatnonzero(np.isfinite(s))
        order = ok[np.argsort(-s[ok], kind="stable")]
        top = [(int(i), float(s[i])) for i in order[:n]]
        bottom = [(int(i), float(s[i])) for i in order[::-1][:n]]
        return top, bottom


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
            old = json.loads(path.read_text()).get("identity")
            if old != identity:
                if not self.cfg.overwrite:
                    diff = sorted(k for k in set(old or {}) | set(identity) if (old or {}).get(k) != identity.get(k))
                    raise ValueError(
                        f"{self.out} holds a bench run with other settings ({', '.join(diff)} differ); "
                        "pass overwrite (--overwrite) to replace it, or choose another out"
                    )
                for sub in ("data", "prepare", "select", "cells", "cache"):
                    shutil.rmtree(self.out / sub, ignore_errors=True)
        elif any(self.out.iterdir()):
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
            counts[name] = {"n": len(records), "fingerprint": _fp(records), "tasks": dict(tasks.most_common())}
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
                **self.cfg.select,
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
            records = [_as_example(r) for r in records]
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


def run_bench(cfg: BenchConfig) -> BenchResult:
    """Run a bench end to end (see the module docstring); resumes where a previous run stopped.

    Raises:
        ValueError: Other settings in `cfg.out` without overwrite, or data that does not fit the config.
        DataError: Unreadable or malformed source data.
    """
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
    data = collect_report_data(bench, table, efficiency, feasibility)
    write_json_atomic(
        results / "metrics.json",
        _json_safe(
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


def _json_safe(obj: Any) -> Any:
    """`obj` with NaN and infinities as None (JSON has no NaN) and numpy scalars as Python numbers."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_tables(
    results: Path, table: Any, efficiency: list[dict[str, Any]], feasibility: list[dict[str, Any]]
) -> None:
    """``results.csv``/``results.parquet``, ``efficiency.csv`` and ``feasibility.csv``, atomically."""
    import io

    import pandas as pd

    write_text_atomic(results / "results.csv", table.to_csv(index=False))
    buf = io.BytesIO()
    table.to_parquet(buf, index=False)
    write_bytes_atomic(results / "results.parquet", buf.getvalue())
    write_text_atomic(results / "efficiency.csv", pd.DataFrame(efficiency).to_csv(index=False))
    write_text_atomic(results / "feasibility.csv", pd.DataFrame(feasibility).to_csv(index=False))


def _as_example(r: Record) -> Record:
    """A pair as an example answering its prompt with the chosen response (other records unchanged)."""
    if not isinstance(r, Pair):
        return r
    messages = [*r.prompt, {"role": "assistant", "content": r.chosen}]
    return Example(id=r.id, messages=messages, task=r.task, rejected=r.rejected, source=r.source, line=r.line)


def _pool_item(r: Record) -> PoolItem:
    if isinstance(r, Pair):
        prompt = next((m["content"] for m in reversed(r.prompt) if m["role"] == "user"), "")
        return PoolItem(r.id, r.task, prompt, f"chosen: {r.chosen}\nrejected: {r.rejected}")
    if isinstance(r, MCItem):
        return PoolItem(r.id, r.task, r.question, r.choices[int(r.answer)])
    prompt = next((m["content"] for m in reversed(r.prompt_messages) if m["role"] == "user"), "")
    return PoolItem(r.id, r.task, prompt, r.response)


def collect_report_data(
    bench: _Bench, table: Any, efficiency: list[dict[str, Any]], feasibility: list[dict[str, Any]]
) -> ReportData:
    cfg = bench.cfg
    budgets = bench.budgets()
    k_max = budgets[-1][1]
    seed0 = cfg.seeds[0]
    selections = [s for (m, k, seed), s in bench.selections.items() if k == k_max and seed == seed0]
    n_pool = len(bench.sets["pool"])
    infos = []
    for b in cfg.benchmarks:
        n = len(bench.sets[b.data])
        infos.append(
            BenchmarkInfo(b.name, b.kind.value, b.metric or "", bool(b.higher_is_better), min(n, b.limit or n))
        )
    settings = {
        "model": cfg.model if cfg.prepare is None else f"{cfg.model} after the prepare step",
        "kind": cfg.kind,
        "pool": n_pool,
        "targets": len(bench.sets.get("targets", [])),
        "held-out targets": len(bench.sets.get("heldout", [])),
        "budgets": ", ".join(f"{b} ({k})" for b, k in budgets),
        "seeds": ", ".join(map(str, cfg.seeds)) + f" (seeded: {', '.join(cfg.seeded_methods) or 'none'})",
        "methods": ", ".join(cfg.methods),
        "training": json.dumps(cfg.train, sort_keys=True) if cfg.train else "defaults",
        "references": " and ".join(cfg.references),
    }
    return ReportData(
        title=cfg.name,
        created=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        machine=machine_info(),
        settings=settings,
        benchmarks=infos,
        table=table,
        efficiency=efficiency,
        feasibility=feasibility,
        pool=[_pool_item(r) for r in bench.sets["pool"]],
        selections=selections,
        unavailable=dict(bench.unavailable),
        notes=list(bench.notes),
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
