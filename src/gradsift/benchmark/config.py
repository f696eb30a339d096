"""A bench's configuration: the config dataclasses, reading them from YAML with size sections and overrides, and
resolving the paths in them.

`BenchConfig` is the whole scenario (see `gradsift.benchmark.run` for what a run does with it): the data sets
(`DataConfig`: a pool, targets with a held-out part and further named sets, each mixed from `Source` files),
an optional `PrepareConfig` step, the methods x budgets x seeds grid, the selection and training settings,
and the `BenchmarkSpec` every trained model is scored on. Every config checks itself when built and names
the field and section at fault.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from gradsift.benchmark.dataspec import DataConfig, SetKind, Source, fields_of, from_mapping
from gradsift.benchmark.metrics import METRIC_DIRECTIONS, PRIMARY_METRICS
from gradsift.benchmark.prepare import EVAL_OWN, PrepareConfig, check_train
from gradsift.evaluation.run import EvaluateConfig
from gradsift.evaluation.tasks import TaskKind
from gradsift.model.load import DType, ModelSettings
from gradsift.recipes.options import applicable, check_options
from gradsift.report.data import BASELINES
from gradsift.score.base import Method
from gradsift.selection.budget import Budget
from gradsift.settings import check_keys, setting, settings_hash


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
        own = sorted(set(self.settings) & EVAL_OWN)
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
        own = {k: values.pop(k) for k in list(values) if k in fields_of(cls) and k != "settings"}
        settings = {**values.pop("settings", {}), **values}
        check_keys(settings, fields_of(EvaluateConfig) | fields_of(cls), f"benchmark {own.get('name')}")
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
        return settings_hash(payload, 12)


BAND = "band"
"""The budget of the band methods: each keeps its whole band, the other methods the band size of
`BenchConfig.band_size_of`."""

BAND_METHODS = frozenset({"tif", "lossdiff", "irm", "fusion"})
"""Methods whose own selection rule keeps a middle percentile band (methods.md section 3)."""

SELECT_OWN = {"pool", "out", "targets", "methods", "budget", "kind", "model", "dtype", "device", "seed"}
SELECT_OWN |= {"cache_dir", "overwrite", "pool_format", "targets_format", "pool_limit", "targets_limit"}
SELECT_OWN |= {"on_invalid"}
"""`SelectConfig` fields a bench sets itself."""


@dataclass
class Variant:
    """A method run with its own options, under its own name (e.g. an ablation).

    Attributes:
        method: The method it runs (a `gradsift.score.base.Method` value).
        options: Method options merged over the bench's ``select.options``.
        cache: Select with this method's cache (its `method`, unseeded, or a variant of it without a cache of
            its own), for options that change only the scoring (PRISM's cosine, token-mean and uniform-weight
            forms read the same features): the owner's selection runs first, even when `methods` leaves it out,
            and the variant's cost is the owner's plus its own. Not part of the run's identity: it changes what
            is computed, not what is selected.
    """

    method: str
    options: dict[str, Any] = field(default_factory=dict)
    cache: str | None = None

    def __post_init__(self) -> None:
        self.method = Method.parse_list([self.method])[0].value
        if not isinstance(self.options, dict):
            raise ValueError(f"variant of {self.method}: options must be a mapping")


@dataclass
class LrSearch:
    """Choose the learning rate once, on random selections, before the grid.

    Every budget's random selection (first seed) is trained with each learning rate of `grid` and scored on
    one benchmark; the learning rate with the best mean over budgets trains every cell of the grid (a tie goes
    to the rate listed first).

    Attributes:
        grid: Learning rates to try.
        benchmark: The benchmark that decides (its metric and direction; default the first).
        data: Score it on this set instead of the benchmark's own (a set held out from the benchmarks, so the
            choice does not see the evaluation examples).
        limit: Records of that set scored (0: all).
    """

    grid: list[float]
    benchmark: str | None = None
    data: str | None = None
    limit: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.grid, list) or len(self.grid) < 2:
            raise ValueError("lr_search.grid: give at least two learning rates, e.g. [1.0e-4, 3.0e-4, 1.0e-3]")
        if any(isinstance(x, bool) or not isinstance(x, int | float) or not x > 0 for x in self.grid):
            raise ValueError(f"lr_search.grid: learning rates must be positive numbers, got {self.grid}")
        self.grid = [float(x) for x in self.grid]
        if len(set(self.grid)) != len(self.grid):
            raise ValueError(f"lr_search.grid repeats a learning rate: {self.grid}")
        if self.limit < 0:
            raise ValueError("lr_search.limit must be >= 0 (0: all)")


@dataclass
class BenchConfig:
    """A selector comparison: methods x budgets x seeds on one pool and one target set.

    Attributes:
        name: Name of the scenario (report title).
        out: Working directory (data, selections, adapters, evaluations; resumable).
        results: Where the tables and the report go (default `out`).
        keep: Where the run's durable record goes (`gradsift.benchmark.keep`: selections, per-example evaluation
            results, training records, sittings; no models), so a run whose `out` is lost resumes from it.
            Default none.
        kind: ``sft`` (SFT on examples) or ``pair`` (DPO on preference pairs).
        model: ``builtin``, a local directory, a ``.gguf`` file or a hub id.
        dtype: Model dtype.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        methods: Selection methods (`gradsift.score.base.Method` values or names in `variants`); ``random`` is
            the reference of the paired comparisons and of the efficiency line.
        budgets: Budgets (counts, fractions or percentages of the pool), or ``band``: band methods keep their
            whole band and every other method the band size of `band_size_of`.
        seeds: Training seeds: every method is trained once per seed.
        seeded_methods: Methods whose selection also takes the seed (each seed its own selection); the others
            select once, with the first seed.
        baselines: Subset of ``full`` (train on the whole pool for the steps of a cell), ``full-epoch`` (one
            epoch of the whole pool), ``base`` (no training), ``original`` (the model before `prepare`) and
            ``aligned`` (after the prepare step ``align``).
        band_size_of: The band method whose selection size the other methods take at budget ``band`` (default
            ``fusion`` when run, else the first band method).
        variants: Named method variants (`Variant`) that `methods` may list.
        data_seed: Seed of the data mixing (samples, shuffles, held-out split).
        data: The pool, targets and evaluation sets.
        prepare: Steps run once before selection.
        select: `gradsift.pipeline.SelectConfig` fields for every selection (max_length, batch_tokens,
            options, ...).
        select_cache: ``method``: each method selects with its own cache, so its cost (CPU and wall seconds)
            counts every step it needs, and methods select in the workers side by side; ``shared``: one cache,
            less work (LESS's features for BIDS; one DPO warm-up for TIF, LossDiff, IRM and fusion), the
            selections one after another in this process; a step reused from another method is charged what it
            cost when computed (`gradsift.costs`), so each cost is still stand-alone.
        train: `gradsift.training.run.TrainConfig` fields for every fine-tune; ``max_steps`` gives every cell
            the same number of optimizer steps.
        lr_search: Choose the learning rate on random selections first (`LrSearch`).
        benchmarks: What every trained model is scored on.
        references: The two methods whose (SDF, PIR) points define the efficiency line.
        bootstrap: Bootstrap replicates of the paired comparisons.
        stats_seed: Seed of the bootstrap draws.
        workers: Processes that run selections and cells side by side (each with an equal share of the CPU
            threads).
        command: The command that started the run (for ``RUN.md``; the CLI sets it).
        overwrite: Replace a run with other settings in `out`.
        progress: Progress bars of evaluation (training always shows one; the bench prints a line per cell).
        report: Write the HTML and Markdown report (figures take a few seconds); the tables are always written.
    """

    name: str
    data: DataConfig
    benchmarks: list[BenchmarkSpec]
    # required too: with their help lines (and flags) they come after the fields without
    out: str = setting(help="working directory (default from the config)")
    methods: list[str] = setting(help="run only these methods, comma-separated")
    budgets: list[str] = setting(help="run only these budgets, comma-separated (e.g. 5%,10% or band)")
    results: str | None = setting(None, help="directory for the tables and report (default from the config)")
    keep: str | None = setting(
        None, help="where finished work is copied out of --out to resume from (default from the config)"
    )
    kind: Literal["sft", "pair"] = "sft"
    model: str = "builtin"
    dtype: DType = "auto"
    device: str = setting("auto", help="auto, cpu, cuda or cuda:N")
    seeds: list[int] = field(default_factory=lambda: [0])
    seeded_methods: list[str] = field(default_factory=lambda: ["random"])
    baselines: list[str] = setting(
        default_factory=lambda: ["full", "base"],
        help="run only these baselines, comma-separated (full, full-epoch, base, original, aligned)",
    )
    band_size_of: str | None = None
    variants: dict[str, Variant] = field(default_factory=dict)
    data_seed: int = 0
    prepare: PrepareConfig | None = None
    select: dict[str, Any] = field(default_factory=dict)
    select_cache: Literal["method", "shared"] = "method"
    train: dict[str, Any] = field(default_factory=dict)
    lr_search: LrSearch | None = None
    references: list[str] = field(default_factory=lambda: ["random", "full"])
    bootstrap: int = 2000
    stats_seed: int = 0
    workers: int = setting(
        1, help="processes that run selections and cells side by side, each with an equal share of the CPU threads"
    )
    command: str | None = None
    overwrite: bool = setting(False, help="replace a run made with other settings")
    progress: bool = setting(False, help="progress bars of every stage")
    report: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.data, dict):
            self.data = from_mapping(DataConfig, self.data, "data")
        if isinstance(self.prepare, dict):
            self.prepare = from_mapping(PrepareConfig, self.prepare, "prepare")
        if isinstance(self.lr_search, dict):
            self.lr_search = from_mapping(LrSearch, self.lr_search, "lr_search")
        if self.kind not in ("sft", "pair"):
            raise ValueError(f"kind must be 'sft' or 'pair', got {self.kind!r}")
        self._check_methods()
        self._check_budgets()
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be a non-empty list of distinct integers, got {self.seeds}")
        self.seeded_methods = [self._method_name(m, "seeded_methods") for m in self.seeded_methods or []]
        self._check_baselines()
        if self.data.pool.kind != self.kind:
            raise ValueError(f"data.pool.kind is {self.data.pool.kind!r} but the bench's kind is {self.kind!r}")
        if self.data.targets is not None and self.data.targets.kind not in ("sft", "pair"):
            raise ValueError("data.targets must be an sft or pair set (targets have reference answers)")
        self._check_benchmarks()
        if len(self.references) != 2 or len(set(self.references)) != 2:
            raise ValueError(f"references must name two different methods, got {self.references}")
        own = sorted(set(self.select) & SELECT_OWN)
        if own:
            raise ValueError(f"select: the bench sets {own} itself")
        from gradsift.pipeline import SelectConfig

        check_keys(self.select, fields_of(SelectConfig) - SELECT_OWN, "select")
        options = self.select.get("options") or {}
        if not isinstance(options, dict):
            raise ValueError(f"select.options must be a mapping of method options, got {options!r}")
        try:
            base = [self.variants[m].method if m in self.variants else m for m in self.methods]
            check_options([m for m in base if m not in BASELINES], options, self.kind)
        except ValueError as e:
            raise ValueError(f"select.options: {e}") from None
        if self.select_cache not in ("method", "shared"):
            raise ValueError(f"select_cache must be 'method' or 'shared', got {self.select_cache!r}")
        check_train(self.train, self.kind, "train")
        self._check_lr_search()
        for name, value in (("bootstrap", self.bootstrap), ("workers", self.workers)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        ModelSettings(model=self.model, dtype=self.dtype, device=self.device)

    def _method_name(self, name: Any, where: str) -> str:
        """A method or variant name, with a clear error naming the closest valid ones."""
        if isinstance(name, str) and name in self.variants:
            return name
        try:
            return Method.parse_list([str(name)])[0].value
        except ValueError as e:
            known = f"; variants: {', '.join(self.variants)}" if self.variants else ""
            raise ValueError(f"{where}: {e}{known}") from None

    def _check_methods(self) -> None:
        if not isinstance(self.variants, dict):
            raise ValueError("variants must map names to {method, options}")
        variants = {}
        for name, v in self.variants.items():
            if not isinstance(name, str) or not name or any(c in name for c in "/.") or "__" in name:
                raise ValueError(f"variant name {name!r} must be non-empty without '/', '.' or '__'")
            if name in {m.value for m in Method} or name in BASELINES:
                raise ValueError(f"variant name {name!r} is already a method or baseline name; choose another")
            variants[name] = v if isinstance(v, Variant) else from_mapping(Variant, v, f"variants.{name}")
        self.variants = variants
        for name, v in variants.items():
            if v.cache is None:
                continue
            owner = self._method_name(v.cache, f"variants.{name}.cache")
            if self.base_method(owner) != v.method:
                raise ValueError(f"variants.{name}.cache: {owner} runs {self.base_method(owner)}, not {v.method}")
            if owner == name or (owner in variants and variants[owner].cache is not None):
                raise ValueError(f"variants.{name}.cache: {owner} must select with a cache of its own")
            if {owner, name} & set(self.seeded_methods or []):
                raise ValueError(f"variants.{name}.cache: a method in seeded_methods cannot share a cache")
            v.cache = owner
        if not isinstance(self.methods, list) or not self.methods:
            raise ValueError("methods must be a non-empty list such as [random, less]")
        self.methods = [self._method_name(m, "methods") for m in self.methods]
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods repeat: {self.methods}")

    def _check_budgets(self) -> None:
        if not isinstance(self.budgets, list) or not self.budgets:
            raise ValueError("budgets must be a non-empty list such as ['5%', '10%'], [25, 50] or [band]")
        self.budgets = [str(b) for b in self.budgets]
        for budget in self.budgets:
            if budget != BAND:
                Budget.parse(budget)
        band_methods = [m for m in self.methods if self.base_method(m) in BAND_METHODS]
        if BAND not in self.budgets:
            if self.band_size_of is not None:
                raise ValueError("band_size_of applies to the budget 'band', which budgets does not list")
            return
        if not band_methods:
            raise ValueError(f"budget 'band' needs a band method ({', '.join(sorted(BAND_METHODS))}) in methods")
        if self.band_size_of is None:
            self.band_size_of = "fusion" if "fusion" in band_methods else band_methods[0]
        elif self.band_size_of not in band_methods:
            raise ValueError(f"band_size_of {self.band_size_of!r} must be one of the band methods run: {band_methods}")

    def _check_baselines(self) -> None:
        bad = sorted(set(self.baselines) - set(BASELINES))
        if bad:
            raise ValueError(f"unknown baseline(s) {bad}; choose from {', '.join(BASELINES)}")
        steps = dict(self.prepare.steps()) if self.prepare else {}
        if "original" in self.baselines and not steps:
            raise ValueError("the 'original' baseline is the model before a prepare step, and there is none")
        if "aligned" in self.baselines and "align" not in steps:
            raise ValueError("the 'aligned' baseline is the model after the prepare step 'align', and there is none")
        if "full-epoch" in self.baselines and int(self.train.get("max_steps", -1)) < 1:
            raise ValueError("the 'full-epoch' baseline differs from 'full' only when train.max_steps is set")

    def _check_benchmarks(self) -> None:
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
        for name, step in self.prepare.steps() if self.prepare else []:
            if step.until is not None and step.until.data not in self.data.sets:
                raise ValueError(
                    f"prepare.{name}.until.data: no set {step.until.data!r} in data.sets "
                    f"({', '.join(sorted(self.data.sets)) or 'none'})"
                )

    def _check_lr_search(self) -> None:
        if self.lr_search is None:
            return
        if "lr" in self.train:
            raise ValueError("train.lr is what lr_search chooses: drop one of them")
        if "random" not in self.methods:
            raise ValueError("lr_search trains on random selections: add random to methods")
        names = [b.name for b in self.benchmarks]
        if self.lr_search.benchmark is None:
            self.lr_search.benchmark = names[0]
        elif self.lr_search.benchmark not in names:
            raise ValueError(f"lr_search.benchmark {self.lr_search.benchmark!r} is not a benchmark ({names})")
        spec = self.lr_benchmark()
        if spec is not None:
            sets = self.data.names()
            if spec.data not in sets:
                raise ValueError(f"lr_search.data: no data set {spec.data!r}; sets: {', '.join(sorted(sets))}")
            _check_set_kind(spec, sets[spec.data])

    def lr_benchmark(self) -> BenchmarkSpec | None:
        """The benchmark that decides the learning rate, on its own set (named ``lr_<benchmark>``)."""
        if self.lr_search is None:
            return None
        b = next(x for x in self.benchmarks if x.name == self.lr_search.benchmark)
        return BenchmarkSpec(
            name=f"lr_{b.name}",
            task=b.task,
            data=self.lr_search.data or b.data,
            metric=b.metric,
            higher_is_better=b.higher_is_better,
            limit=self.lr_search.limit or b.limit,
            settings=dict(b.settings),
        )

    def base_method(self, name: str) -> str:
        """The method a method or variant name runs."""
        return self.variants[name].method if name in self.variants else name

    def cache_owner(self, name: str) -> str | None:
        """The method whose selection cache a variant shares (`Variant.cache`), or None."""
        return self.variants[name].cache if name in self.variants else None

    def method_options(self, name: str) -> dict[str, Any]:
        """The selection options of a method or variant: ``select.options`` with the variant's over them."""
        base = dict(self.select.get("options", {}) or {})
        merged = {**base, **self.variants[name].options} if name in self.variants else base
        method = self.variants[name].method if name in self.variants else name
        # the config's options serve every method: each selection gets those its method reads
        return applicable([method], merged)

    @classmethod
    def from_yaml(
        cls, path: str | Path, size: str | None = None, overrides: dict[str, Any] | None = None
    ) -> BenchConfig:
        """Read a bench config file.

        Relative paths in it (``out``, ``results``, ``keep``, ``model`` when it is a path, source paths) are taken
        from the file's folder. A ``sizes:`` section holds named overrides (``gpu``, ``quick``, ...) merged onto
        the file with `merge_overrides`; with `size`, ``out``, ``results`` and ``keep`` get a ``-<size>`` suffix
        unless the size sets them, and so does ``name`` (default: the file name without suffix).

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
            mark = getattr(e, "problem_mark", None)
            where = f", line {mark.line + 1}" if mark is not None else ""
            raise ValueError(f"{p}{where}: not valid YAML ({getattr(e, 'problem', None) or 'syntax'})") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{p}: a bench config is a mapping of settings")
        sizes = raw.pop("sizes", {}) or {}
        if size is not None:
            if size not in sizes:
                raise ValueError(f"{p}: no size {size!r}; sizes: {', '.join(sorted(sizes)) or 'none'}")
            override = sizes[size]
            raw.setdefault("name", p.stem)
            for key in ("name", "out", "results", "keep"):
                if raw.get(key) is not None and key not in override:
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
        return from_mapping(cls, raw, str(p))

    def model_settings(self, model: str | None = None) -> ModelSettings:
        return ModelSettings(model=model or self.model, dtype=self.dtype, device=self.device)

    def results_dir(self) -> Path:
        return Path(self.results or self.out)

    def deciding_sets(self) -> set[str]:
        """The sets of ``data.sets`` that decide selections or adapters: the learning-rate search's and the
        prepare checks'. The others are read only by benchmarks, so changing one re-evaluates the cells."""
        names = {step.until.data for _, step in (self.prepare.steps() if self.prepare else []) if step.until}
        lr = self.lr_benchmark()
        return names | ({lr.data} if lr is not None else set())

    def identity(self) -> dict[str, Any]:
        """What decides the selections and trained adapters; another identity in `out` is refused.

        The data sets read only by benchmarks are not in it (`deciding_sets`): a benchmark's stored result
        carries the fingerprint of the records it scored, so another set re-evaluates the cells."""
        data, deciding = asdict(self.data), self.deciding_sets()
        data["sets"] = {k: v for k, v in data["sets"].items() if k in deciding}
        return json.loads(
            json.dumps(
                {
                    "kind": self.kind,
                    "model": self.model,
                    "dtype": self.dtype,
                    "data_seed": self.data_seed,
                    "data": data,
                    "prepare": asdict(self.prepare) if self.prepare else None,
                    "select": self.select,
                    "variants": {k: {"method": v.method, "options": v.options} for k, v in self.variants.items()},
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
    for key in ("out", "results", "keep"):
        if key in raw and raw[key] is not None:
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
    prepare = raw.get("prepare")
    for step in (prepare or {}).values() if isinstance(prepare, dict) else []:
        if isinstance(step, dict):
            fix_spec(step.get("data"))
    for b in raw.get("benchmarks", []) or []:
        if isinstance(b, dict) and isinstance(b.get("fewshot"), str):
            b["fewshot"] = fix(b["fewshot"])
    return raw
