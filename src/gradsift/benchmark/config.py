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

from gradsift.data.formats import FieldMap
from gradsift.data.load import OnInvalid
from gradsift.evaluation.run import EvaluateConfig
from gradsift.evaluation.tasks import TaskKind
from gradsift.model.load import DType, ModelSettings
from gradsift.recipes.options import check_options
from gradsift.report.data import BASELINES
from gradsift.score.base import Method
from gradsift.selection.budget import Budget
from gradsift.settings import check_fields, check_keys, field_names, from_mapping, setting, settings_hash
from gradsift.training.run import TrainConfig

SetKind = Literal["sft", "pair", "prompts", "mc"]
"""What a data set holds: examples, preference pairs, prompts only, or multiple-choice items."""

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


def _fields(cls: type) -> set[str]:
    return set(field_names(cls))


def _from_dict(cls: type, values: Any, where: str) -> Any:
    """Build dataclass `cls` from a mapping, naming an unknown key (with the closest valid one) and the config
    section it is in."""
    return from_mapping(cls, values, where)


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
        check_keys(settings, _fields(EvaluateConfig) | _fields(cls), f"benchmark {own.get('name')}")
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


def _check_train(values: Any, kind: str, where: str) -> None:
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping of training settings")
    own = sorted(set(values) & _TRAIN_OWN)
    if own:
        raise ValueError(f"{where}: the bench sets {own} itself")
    check_keys(values, _fields(TrainConfig) - _TRAIN_OWN, where)
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
    data: DataConfig
    benchmarks: list[BenchmarkSpec]
    budgets: list[str]
    # required too: with their help lines (and flags) they come after the fields without
    out: str = setting(help="working directory (default from the config)")
    methods: list[str] = setting(help="run only these methods, comma-separated")
    results: str | None = setting(None, help="directory for the tables and report (default from the config)")
    kind: Literal["sft", "pair"] = "sft"
    model: str = "builtin"
    dtype: DType = "auto"
    device: str = setting("auto", help="auto, cpu, cuda or cuda:N")
    seeds: list[int] = field(default_factory=lambda: [0])
    seeded_methods: list[str] = field(default_factory=lambda: ["random"])
    baselines: list[str] = field(default_factory=lambda: ["full", "base"])
    data_seed: int = 0
    prepare: PrepareConfig | None = None
    select: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    references: list[str] = field(default_factory=lambda: ["random", "full"])
    overwrite: bool = setting(False, help="replace a run made with other settings")
    progress: bool = setting(False, help="progress bars of every stage")
    report: bool = True

    def __post_init__(self) -> None:
        check_fields(self)
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

        check_keys(self.select, _fields(SelectConfig) - _SELECT_OWN, "select")
        options = self.select.get("options") or {}
        if not isinstance(options, dict):
            raise ValueError(f"select.options must be a mapping of method options, got {options!r}")
        try:
            check_options(self.methods, options, self.kind)
        except ValueError as e:
            raise ValueError(f"select.options: {e}") from None
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
