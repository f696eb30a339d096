"""`select`: read a pool and targets, score every candidate with one or more methods, keep a budget.

This is the Python API behind ``gradsift select``. Outputs in ``out``:
``selected.jsonl`` (the first method's selection: original records plus ``gradsift_score``),
``selected-<method>.jsonl`` for further methods, ``scores.parquet`` (every candidate, every method's
score, rank and selection flag), ``report.html`` (what was picked, why and at what cost, `gradsift.select_report`)
and ``config.json`` (all settings, model and data fingerprints, timings, each method's selection size), written
last, so a directory with ``config.json`` is complete.
``out`` is a `gradsift.rundir.RunDir`: locked for the run, refused when it holds files gradsift did not write
or another run's settings (unless ``overwrite``), and left holding exactly this run's outputs.

Budget: a budget given keeps that many candidates with every method. Without one each method keeps its own
default: `gradsift.recipes.base.DEFAULT_BUDGET` (5%) for the methods that keep their top scores and for BIDS,
the whole middle band for the band methods (TIF, LossDiff, IRM, fusion with ``pref_mode=band``), as their
paper does. ``config.json`` records each method's selection size under ``n_selected``, the budget given under
``budget_given`` and the top-k count it came to under ``budget`` (a count above the pool keeps the whole pool,
with a warning).
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from gradsift.atomic import write_bytes_atomic, write_json_atomic
from gradsift.data.export import WriteFormat, write_selection
from gradsift.data.load import load_examples, load_pairs
from gradsift.data.records import Kind, fingerprint
from gradsift.model.load import MODEL_HELP, DType, LoadedModel, ModelSettings, load_model
from gradsift.recipes.base import Recipe, ScoreContext
from gradsift.recipes.options import METHODS, check_options
from gradsift.rundir import RunDir
from gradsift.score.base import Method, Scores
from gradsift.selection.budget import Budget
from gradsift.selection.topk import top_k
from gradsift.settings import check_fields, field_names, setting
from gradsift.stats import task_shares
from gradsift.version import __version__

log = logging.getLogger(__name__)

CONFIG = "config.json"


@dataclass
class SelectConfig:
    """Settings of one selection run (the flags of ``gradsift select``, the keys of its ``--config`` file).

    Attributes:
        pool: Candidate data (file, saved dataset directory, or ``hf:name``).
        out: Output directory (`gradsift.rundir.RunDir`: gradsift's own files only, one run at a time).
        targets: Target examples (what the model should get better at); needed by target-aware methods.
        methods: Methods to run, e.g. ``["less", "prism"]``; the first one writes ``selected.jsonl``.
        budget: Count (``"50"``) or fraction (``"5%"``, ``"0.05"``) of the pool to keep with every method;
            None (default): each method's default (module docstring).
        kind: ``sft`` (examples) or ``pair`` (preference pairs).
        model: ``builtin``, a local directory, a ``.gguf`` file or a hub id.
        dtype: Model dtype (``auto``: bfloat16 on capable GPUs, float32 on CPU).
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        pool_format: Force the pool's format instead of detecting it.
        targets_format: Force the targets' format.
        max_length: Token limit per sequence (see data/tokenize.py for the truncation policy).
        batch_tokens: Padded tokens per batch.
        seed: Seed for random choices (random baseline, projections, warm-up sampling).
        loss_order: ``high`` keeps high-loss examples, ``low`` low-loss ones (loss/perplexity baselines).
        length_order: ``long`` or ``short`` (length baseline).
        on_invalid: ``raise`` (default) stops at the first invalid record with its file, line and field;
            ``skip`` drops invalid records and malformed lines with a warning naming them.
        pool_limit: Use only the first N pool records (0: all).
        targets_limit: Use only the first N targets (0: all).
        cache_dir: Where warm-up checkpoints and feature stores are kept and reused (default ``out/cache``);
            runs that share it share their features.
        overwrite: Replace the outputs of a run with different settings in `out`.
        options: Method options by name, checked against `gradsift.recipes.options` when the config is built.
        write_format: How ``selected*.jsonl`` hold the records: ``original`` (as read), or ``messages`` and
            ``prompt-completion``, TRL's conversational formats (`gradsift.data.export`).
    """

    pool: str = setting(
        help="candidate data: JSONL/JSON/CSV/TSV/Parquet (optionally .gz), a saved dataset dir or hf:NAME"
    )
    out: str = setting(help="output directory")
    targets: str | None = setting(None, help="target examples (what the model should get better at)")
    methods: list[str] = setting(
        default_factory=lambda: ["random"], help="method(s), comma-separated (listed below)", flag="--method"
    )
    budget: str | None = setting(
        None,
        help="count (50) or fraction (5%, 0.05) to select; default 5% for top-k methods and BIDS, the whole "
        "middle band for tif, lossdiff, irm and fusion",
    )
    kind: Literal["sft", "pair"] = setting("sft", help="sft examples or preference pairs")
    model: str = setting("builtin", help=MODEL_HELP, group="model")
    dtype: DType = setting("auto", help="model dtype", group="model")
    device: str = setting("auto", help="auto, cpu, cuda or cuda:N", group="model")
    pool_format: str | None = setting(None, help="force the pool's format instead of detecting it")
    targets_format: str | None = setting(None, help="force the targets' format")
    max_length: int = setting(256, help="token limit per sequence")
    batch_tokens: int = setting(1536, help="padded tokens per batch")
    seed: int = setting(0, help="seed of every random choice")
    loss_order: Literal["high", "low"] = setting("high", help="loss and perplexity keep high or low loss")
    length_order: Literal["long", "short"] = setting("long", help="length keeps long or short responses")
    on_invalid: Literal["raise", "skip"] = setting("raise", help="stop at an invalid record or line, or skip it")
    pool_limit: int = setting(0, help="use only the first N pool records (0: all)")
    targets_limit: int = setting(0, help="use only the first N targets (0: all)")
    cache_dir: str | None = setting(
        None, help="where warm-up checkpoints and feature stores are kept (default OUT/cache)"
    )
    overwrite: bool = setting(False, help="replace the outputs of a run with other settings in --out")
    options: dict[str, Any] = setting(
        default_factory=dict, help="method option (repeatable; see --help-options)", flag="--option"
    )
    write_format: str = setting(
        "original",
        help="selected*.jsonl as read (original) or in TRL's formats",
        choices=("original", "messages", "prompt-completion"),
    )

    def __post_init__(self) -> None:
        check_fields(self)
        self.methods = [m.value for m in Method.parse_list(self.methods)]
        self.write_format = WriteFormat.parse(self.write_format).value
        if self.budget is not None:
            Budget.parse(self.budget)
        if self.max_length < 8:
            raise ValueError(f"max_length must be at least 8 tokens, got {self.max_length}")
        if self.batch_tokens < self.max_length:
            raise ValueError(f"batch_tokens ({self.batch_tokens}) must be at least max_length ({self.max_length})")
        if self.pool_limit < 0 or self.targets_limit < 0:
            raise ValueError("pool_limit and targets_limit must be >= 0 (0 means all)")
        ModelSettings(model=self.model, dtype=self.dtype, device=self.device)
        own = [k for k in self.options if k in field_names(SelectConfig)]
        if own:
            flag = "--" + own[0].replace("_", "-")
            raise ValueError(f"option {own[0]} is a setting of its own: use {flag} (SelectConfig.{own[0]})")
        check_options(self.methods, self.options, self.kind)
        needy = [m for m in self.methods if METHODS[Method(m)].needs_targets]
        if needy and not self.targets:
            raise ValueError(f"the {needy[0]} method needs --targets")

    def model_settings(self) -> ModelSettings:
        return ModelSettings(model=self.model, dtype=self.dtype, device=self.device)

    def settings_for_comparison(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("overwrite")
        return d


@dataclass
class SelectResult:
    """What a selection run produced.

    Attributes:
        out: The output directory.
        selections: Method -> selected rows, in selection order (each method's own size without a budget).
        scores: Method -> its scores.
        n_pool: Candidates in the pool.
        budget: The budget given, or the default of the methods that keep their top scores, as a count.
        summary: Method -> task -> shares of the selection and of the pool.
        report: The ``report.html`` written, or None when it could not be (a warning says why).
    """

    out: Path
    selections: dict[str, list[int]]
    scores: dict[str, Scores]
    n_pool: int
    budget: int
    summary: dict[str, Any]
    report: Path | None = None


def make_scorer(method: Method) -> Recipe:
    """The recipe of a method."""
    # Imported on first use: the recipes pull in the gradient and training stack, which importing the
    # pipeline (the public API, the CLI's --help) should not pay for.
    from gradsift.recipes.baselines import EmbedScorer, IFDScorer, LengthScorer, LossScorer, RandomScorer
    from gradsift.recipes.preference import FusionScorer, IRMScorer, LossDiffScorer, TIFScorer
    from gradsift.recipes.sft import BidsScorer, LessScorer, PrismScorer

    recipes: dict[Method, Callable[[], Recipe]] = {
        Method.RANDOM: RandomScorer,
        Method.LENGTH: LengthScorer,
        Method.LOSS: LossScorer,
        Method.PERPLEXITY: lambda: LossScorer(perplexity=True),
        Method.IFD: IFDScorer,
        Method.EMBED: EmbedScorer,
        Method.LESS: LessScorer,
        Method.PRISM: PrismScorer,
        Method.BIDS: BidsScorer,
        Method.TIF: TIFScorer,
        Method.LOSSDIFF: LossDiffScorer,
        Method.IRM: IRMScorer,
        Method.FUSION: FusionScorer,
    }
    if method not in recipes:
        raise NotImplementedError(f"method '{method.value}' is not available in this version of gradsift")
    return recipes[method]()


def _outputs(cfg: SelectConfig) -> tuple[str, ...]:
    """What a run writes into ``out`` (the cache aside)."""
    selected = ["selected.jsonl", *(f"selected-{m}.jsonl" for m in cfg.methods[1:])]
    return (*selected, "scores.parquet", "report.html", CONFIG)


def run_select(cfg: SelectConfig) -> SelectResult:
    """Run a selection end to end (see module docstring for the outputs).

    ``out`` is claimed first (`gradsift.rundir.RunDir`): a second run into it fails at once, and a directory
    holding other files or another run's settings is refused before any data is read.
    """
    t0 = time.perf_counter()
    out = Path(cfg.out)
    run = RunDir(
        out,
        "a selection",
        _outputs(cfg),
        keep=("cache",) if cfg.cache_dir is None else (),
        legacy=("selected.jsonl", "selected-*.jsonl", "scores.parquet", "cache"),
    )
    with run.claim(cfg.settings_for_comparison(), cfg.overwrite):
        if cfg.device.startswith("cuda"):
            cfg.model_settings().resolve_device()  # CUDA asked for but absent: say so before reading anything
        return _run(cfg, out, run, t0)


def _run(cfg: SelectConfig, out: Path, run: RunDir, t0: float) -> SelectResult:
    timings: dict[str, float] = {}
    t = time.perf_counter()
    if cfg.kind == "pair":
        pairs = load_pairs(cfg.pool, fmt=cfg.pool_format, on_invalid=cfg.on_invalid)
        pool = []
        records: list[Any] = pairs
    else:
        pairs = []
        pool = load_examples(cfg.pool, kind=Kind.SFT, fmt=cfg.pool_format, on_invalid=cfg.on_invalid)
        records = pool
    targets = (
        load_examples(cfg.targets, kind=Kind.TARGET, fmt=cfg.targets_format, on_invalid=cfg.on_invalid)
        if cfg.targets
        else []
    )
    if cfg.pool_limit:
        records = records[: cfg.pool_limit]
        pool, pairs = pool[: cfg.pool_limit], pairs[: cfg.pool_limit]
    if cfg.targets_limit:
        targets = targets[: cfg.targets_limit]
    timings["read"] = time.perf_counter() - t

    n = len(records)
    budget = Budget.parse(cfg.budget) if cfg.budget is not None else None
    given = budget.resolve(n) if budget is not None else None
    if budget is not None and budget.count is not None and budget.count > n:
        log.warning("budget %d is larger than the pool of %d records: selecting all %d", budget.count, n, n)
    cached: dict[str, LoadedModel] = {}

    def loader() -> LoadedModel:
        t1 = time.perf_counter()
        cached["m"] = load_model(cfg.model_settings())
        timings["load_model"] = timings.get("load_model", 0.0) + time.perf_counter() - t1
        return cached["m"]

    options = {**cfg.options, "loss_order": cfg.loss_order, "length_order": cfg.length_order}
    ctx = ScoreContext(
        pool=pool,
        targets=targets,
        pairs=pairs,
        workdir=Path(cfg.cache_dir) if cfg.cache_dir else out / "cache",
        seed=cfg.seed,
        max_length=cfg.max_length,
        batch_tokens=cfg.batch_tokens,
        load_model=loader,
        options=options,
        budget=given,
    )
    k = ctx.top_k_budget
    run.begin()
    scores: dict[str, Scores] = {}
    selections: dict[str, list[int]] = {}
    for m in Method.parse_list(cfg.methods):
        t = time.perf_counter()
        s = make_scorer(m).score(ctx)
        selections[m.value] = s.selected if s.selected is not None else top_k(s.score, k).indices
        scores[m.value] = s
        timings[f"score_{m.value}"] = time.perf_counter() - t

    t = time.perf_counter()
    _write_outputs(out, cfg, records, scores, selections)
    timings["write"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0

    tasks = [r.task for r in records]
    summary = {m: task_shares(tasks, rows) for m, rows in selections.items()}
    config = {
        "settings": cfg.settings_for_comparison(),
        "gradsift_version": __version__,
        "python": platform.python_version(),
        "machine": platform.platform(),
        "model": cached["m"].describe() if cached else None,
        "data": {
            "pool": {"path": cfg.pool, "n": n, "fingerprint": fingerprint(records)},
            "targets": {"path": cfg.targets, "n": len(targets), "fingerprint": fingerprint(targets)}
            if targets
            else None,
        },
        "tokenization": ctx.pool_encode_stats.as_dict() if ctx.pool_encode_stats else None,
        "budget": k,
        "budget_given": cfg.budget,
        "n_selected": {m: len(rows) for m, rows in selections.items()},
        "methods": {m: s.info for m, s in scores.items()},
        "task_shares": summary,
        "timings_s": {k_: round(v, 3) for k_, v in timings.items()},
    }
    report = _write_report(out, config, records, targets)
    run.finish()
    write_json_atomic(out / CONFIG, config)
    return SelectResult(
        out=out, selections=selections, scores=scores, n_pool=n, budget=k, summary=summary, report=report
    )


def _write_report(out: Path, config: dict[str, Any], records: list[Any], targets: list[Any]) -> Path | None:
    """``report.html``, its time added to ``config``; a failure is a warning, not a lost selection."""
    from gradsift.select_report import write_report

    t = time.perf_counter()
    try:
        path = write_report(out, config, records, targets)
    except Exception as err:  # the selection's outputs are written and the page can be rebuilt
        log.warning("report.html could not be written (%s); rebuild it with: gradsift report %s", err, out)
        return None
    config["timings_s"]["report"] = round(time.perf_counter() - t, 3)
    return path


def _write_outputs(
    out: Path, cfg: SelectConfig, records: list[Any], scores: dict[str, Scores], selections: dict[str, list[int]]
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = len(records)
    cols: dict[str, Any] = {
        "row": np.arange(n),
        "id": [r.id for r in records],
        "task": [r.task for r in records],
        "source": [r.source for r in records],
        "line": [r.line for r in records],
    }
    for m, s in scores.items():
        cols[f"score_{m}"] = s.score
        rank = np.full(n, -1)
        rank[selections[m]] = np.arange(len(selections[m]))
        cols[f"rank_{m}"] = rank
        cols[f"selected_{m}"] = rank >= 0
        for c, v in s.columns.items():
            cols[f"{m}_{c}"] = np.asarray(v)
    buf = pa.BufferOutputStream()
    pq.write_table(pa.table(cols), buf)
    write_bytes_atomic(out / "scores.parquet", buf.getvalue().to_pybytes())
    for i, (m, rows) in enumerate(selections.items()):
        name = "selected.jsonl" if i == 0 else f"selected-{m}.jsonl"
        write_selection(
            out / name,
            [records[r] for r in rows],
            cfg.write_format,
            {
                "gradsift_id": [records[r].id for r in rows],
                "gradsift_score": [float(scores[m].score[r]) for r in rows],
                "gradsift_method": [m] * len(rows),
            },
        )
