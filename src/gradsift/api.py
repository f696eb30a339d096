"""The public API: one function per stage, each a documented call into that stage's implementation.

``gradsift <stage>`` on the command line is a thin layer over these functions, so a notebook can do
everything the CLI does. Each function takes its stage's config dataclass (the same settings as the CLI's
flags and ``--config`` YAML files) and returns the stage's result; the files it writes are the same as the
CLI's. The stages are imported inside the functions, so ``import gradsift`` does not import torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from gradsift.benchmark.config import BenchConfig
    from gradsift.benchmark.run import BenchResult
    from gradsift.data.records import Example, Pair
    from gradsift.evaluation.refusal import RefusalJudge
    from gradsift.evaluation.run import EvaluateConfig, Records
    from gradsift.gradients.extract import FeatureConfig
    from gradsift.model.load import LoadedModel
    from gradsift.pipeline import SelectConfig, SelectResult
    from gradsift.store.features import FeatureStore
    from gradsift.training.common import TrainResult
    from gradsift.training.run import TrainConfig

C = TypeVar("C")


def select(config: SelectConfig) -> SelectResult:
    """Score every candidate of a pool with one or more methods and keep a budget of it.

    Reads the pool (and the targets, for target-aware methods), loads the model when a method needs one,
    scores with each method and selects its top budget. Writes to ``config.out``: ``selected.jsonl`` (the
    first method's selection), ``selected-<method>.jsonl`` for the others, ``scores.parquet`` (every
    candidate's score, rank and selection flag per method) and ``config.json`` (written last). Warm-up
    checkpoints and feature stores are cached under ``config.cache_dir`` and reused by later runs.

    Args:
        config: The pool, targets, methods, budget, model and method options.

    Returns:
        Per method, the selected row indices into the pool and the scores [N], plus the pool size, the
        budget in examples and the per-task shares of each selection.

    Raises:
        ValueError: Bad settings or method options (checked before anything is read), a method that needs
            missing targets, or an output directory holding a run with other settings or files gradsift did
            not write (without ``config.overwrite``).
        DataError: Unreadable or malformed pool or targets (file, line and field named).
        RunDirBusy: Another run holds ``config.out`` (an `OSError`; the message names the process).

    Example:
        >>> import gradsift
        >>> cfg = gradsift.SelectConfig(pool="pool.jsonl", targets="targets.jsonl", out="runs/less", methods=["less"])
        >>> result = gradsift.select(cfg)
        >>> rows = result.selections["less"]  # indices into the pool of the kept examples
    """
    from gradsift.pipeline import run_select

    return run_select(config)


def features(
    config: FeatureConfig,
    *,
    records: list[Example] | list[Pair] | None = None,
    loaded: LoadedModel | None = None,
    progress: bool = True,
) -> FeatureStore:
    """Compute per-example LoRA gradient features, projected, into a resumable feature store.

    Under ``torchrun`` the ranks fill interleaved rows of one store. A killed run resumes at the rows not
    yet written; a store made with other settings is refused unless ``config.overwrite``.

    Args:
        config: The data, model, LoRA or adapter, optimizer state (for LESS's Adam-preconditioned features),
            projection and batching.
        records: Records to use instead of reading ``config.data``.
        loaded: A loaded base model to reuse instead of loading ``config.model`` (LoRA is attached in place).
        progress: Show a progress bar.

    Returns:
        The complete store: [N, dim] feature rows plus the per-example ``loss`` (and ``margin`` for pairs).

    Raises:
        ValueError: Bad settings, no records, or a store made with other settings.
        DataError: Unreadable or malformed data.

    Example:
        >>> import gradsift
        >>> store = gradsift.features(gradsift.FeatureConfig(data="pool.jsonl", out="stores/pool", kind="sft"))
        >>> n_rows, dim = store.layout.n_rows, store.layout.dim
    """
    from gradsift.gradients.extract import extract_features

    return extract_features(config, records, loaded, progress)


def train(
    config: TrainConfig,
    *,
    records: list[Example] | list[Pair] | None = None,
    loaded: LoadedModel | None = None,
) -> TrainResult:
    """Fine-tune a LoRA adapter with TRL: SFT on examples, or DPO on preference pairs.

    Writes the run directory ``config.out``: ``config.json``, ``train_log.jsonl``, ``adapter/``,
    ``result.json`` and ``train_settings.json``. A rerun with the same settings resumes an interrupted run
    from its last checkpoint, or reuses a finished one.

    Args:
        config: The data, kind (``sft`` or ``pair``), model, LoRA and trainer settings.
        records: Training records to use instead of reading ``config.data``.
        loaded: A loaded base model to train (an adapter is added to it in place) instead of loading one.

    Returns:
        The result; ``result.adapter_dir`` holds the adapter and ``result.model`` is the trained model.

    Raises:
        ValueError: Bad settings, a run with other settings in ``config.out`` (without ``overwrite``), or no
            trainable records.
        DataError: Unreadable or malformed training data.

    Example:
        >>> import gradsift
        >>> result = gradsift.train(gradsift.TrainConfig(data="runs/less/selected.jsonl", out="runs/less/train"))
        >>> adapter = result.adapter_dir  # runs/less/train/adapter
    """
    from gradsift.training.run import run_train

    return run_train(config, records, loaded)


def evaluate(
    config: EvaluateConfig,
    *,
    records: Records | None = None,
    loaded: LoadedModel | None = None,
    judge: RefusalJudge | None = None,
) -> dict[str, Any]:
    """Evaluate a model, optionally with a LoRA adapter, on one task.

    Tasks: ``gsm8k`` and ``bbh`` (exact match of greedy outputs), ``mc`` (multiple-choice log-likelihood),
    ``refusal`` (refusal rate on harmful prompts), ``utility`` (loss on reference answers), ``preference``
    (accuracy and implicit reward margin on held-out pairs) and ``target-loss``.

    Args:
        config: The task, data, model and adapter, and the task's settings; ``config.out`` (when set) is the
            results JSON to write.
        records: Records to use instead of reading ``config.data``.
        loaded: A model to evaluate instead of loading ``config.model`` and ``config.adapter``.
        judge: Refusal judge (default: the phrase judge).

    Returns:
        ``task``, ``n``, ``metrics`` and every example's output, plus ``config``, ``model`` (provenance),
        ``adapter`` and ``seconds``.

    Raises:
        ValueError: ``preference`` without an adapter, or no records.
        DataError: Unreadable or malformed data.
        FileNotFoundError: A missing adapter or few-shot file.

    Example:
        >>> import gradsift
        >>> cfg = gradsift.EvaluateConfig(task="target-loss", data="targets.jsonl", adapter="runs/less/train/adapter")
        >>> result = gradsift.evaluate(cfg)
        >>> loss = result["metrics"]["mean_loss"]
    """
    from gradsift.evaluation.run import run_evaluate

    return run_evaluate(config, records, loaded, judge)


def bench(config: BenchConfig) -> BenchResult:
    """Compare selectors: select with each method, budget and seed, fine-tune, evaluate, and report.

    Every cell (selection, training, evaluation) is cached under ``config.out``; a rerun resumes. Writes the
    results table, paired comparisons of every method with random and full data (bootstrap intervals on the
    same evaluation examples), each method's selection cost, the selector metrics (SDF, PIR, efficiency,
    feasibility), ``RUN.md`` and an HTML report with a Markdown twin to ``config.results``.

    Args:
        config: The bench: data sources, methods, budgets, seeds, training and benchmarks. Usually read
            from a YAML file with `BenchConfig.from_yaml`.

    Returns:
        The results table, the paired comparisons, the efficiency rows, the learning-rate search, the methods
        that could not run and where everything is.

    Raises:
        ValueError: Bad settings, or a working directory holding a bench with other settings (without
            ``overwrite``).

    Example:
        >>> import gradsift
        >>> cfg = gradsift.BenchConfig.from_yaml("bench/configs/targeted-sft.yaml", size="quick")
        >>> result = gradsift.bench(cfg)
        >>> table = result.table  # one row per method, budget and seed
        >>> result.comparisons["gsm8k_loss"]["methods"]["less"]["8"]["vs_random"]  # diff, interval, verdict
    """
    from gradsift.benchmark.run import run_bench

    return run_bench(config)


def rebuild_report(run_dir: str | Path, *, pool: str | None = None, targets: str | None = None) -> Path:
    """Rebuild the ``report.html`` of a finished selection run from its files.

    ``gradsift select`` writes the page itself; this rebuilds it, e.g. after the report code changed or when
    the page was deleted. The page shows each method's score distribution with its cut, the composition of
    pool and selection (task, source file, response length), the overlap between methods, each method's
    first selected and lowest-valued examples with the targets they help most (LESS, PRISM, BIDS) or their
    position in the band (TIF-family), the time by stage and the settings; it is one self-contained file.

    Args:
        run_dir: A ``gradsift select`` output directory (``config.json``, ``scores.parquet``).
        pool: The pool's path, when it is no longer where ``config.json`` says (it must be the same data).
        targets: The targets' path, likewise (without them the helped targets are shown by id only).

    Returns:
        The path of ``report.html``.

    Raises:
        FileNotFoundError: An unfinished run directory, or a pool that is not where it was.
        ValueError: A pool other than the one the run selected from.

    Example:
        >>> import gradsift
        >>> page = gradsift.rebuild_report("runs/less")  # runs/less/report.html
    """
    from gradsift.select_report import rebuild_report as rebuild

    return rebuild(run_dir, pool, targets)


def set_progress(mode: str = "auto") -> None:
    """Choose how long stages (feature passes, forward passes, generation) show their progress.

    ``auto`` (the default): a bar with an ETA when stderr is a terminal, otherwise one log line at most every
    30 s on the ``gradsift.progress`` logger (readable in a scheduler's or CI's log); ``bar``: always a bar;
    ``log``: always log lines (``gradsift --quiet``); ``off``: nothing. Where no bar is drawn, the bars of
    transformers and datasets (weight loading, data processing) and of the trainers of gradsift's warm-ups
    are switched off too.

    Args:
        mode: ``auto``, ``bar``, ``log`` or ``off``.

    Raises:
        ValueError: An unknown mode.

    Example:
        >>> import logging, gradsift
        >>> logging.basicConfig(level=logging.INFO)
        >>> gradsift.set_progress("log")
    """
    from datasets.utils import logging as ds_logging
    from transformers.utils import logging as hf_logging

    from gradsift.progress import bars, set_mode

    set_mode(mode)
    for library in (hf_logging, ds_logging):
        if bars():
            library.enable_progress_bar()
        else:
            library.disable_progress_bar()


def demo_data(out_dir: str | Path, n_pool: int = 240, n_targets: int = 16, seed: int = 0) -> tuple[Path, Path]:
    """Write the demo's data: a generated multi-skill instruction pool and arithmetic targets.

    The pool has eight skills (arithmetic, capitals, unit conversion, reversal, sentiment, antonyms, grammar,
    notes) with about 15% wrong answers; the targets are arithmetic questions. No network needed.

    Args:
        out_dir: Directory for ``pool.jsonl`` and ``targets.jsonl`` (created if missing).
        n_pool: Pool size.
        n_targets: Number of targets.
        seed: Seed of the generator.

    Returns:
        The paths of the pool and target files.

    Example:
        >>> import gradsift
        >>> pool, targets = gradsift.demo_data("demo-out/data", n_pool=160, n_targets=12)
        >>> result = gradsift.select(gradsift.SelectConfig(pool=str(pool), out="demo-out/random", budget="10%"))
    """
    from gradsift.data.demo import write_demo_data

    return write_demo_data(out_dir, n_pool=n_pool, n_targets=n_targets, seed=seed)


def config_from(cls: type[C], values: Mapping[str, Any], where: str) -> C:
    """Build a stage's config (`SelectConfig`, `FeatureConfig`, ...) from a mapping such as a YAML file's.

    The keys are the config's field names (dashes read as underscores); the values are checked against the
    field types.

    Args:
        cls: The config dataclass.
        values: Settings by field name.
        where: Where the mapping comes from (a file name), named in errors.

    Raises:
        ValueError: An unknown key (the closest valid one named), a missing one, or a bad value.

    Example:
        >>> import gradsift, yaml
        >>> cfg = gradsift.config_from(gradsift.SelectConfig, yaml.safe_load(open("run.yaml")), "run.yaml")
    """
    from gradsift.settings import from_mapping

    return from_mapping(cls, values, where)


def methods_help(methods: Sequence[str] | None = None, options: bool = False) -> str:
    """The selection methods (all, or `methods`), one line each; with `options`, each one's options (name,
    values, default, help).

    Raises:
        ValueError: An unknown method.

    Example:
        >>> import gradsift
        >>> print(gradsift.methods_help(["less"], options=True))
    """
    from gradsift.recipes.options import METHODS, describe
    from gradsift.score.base import Method

    chosen = list(METHODS) if methods is None else Method.parse_list(list(methods))
    return describe(chosen, options)


def method_options(methods: Sequence[str], options: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of `options` that some method of `methods` reads (a shared option set cut to one run).

    Raises:
        ValueError: An unknown method.
    """
    from gradsift.recipes.options import applicable
    from gradsift.score.base import Method

    return applicable(Method.parse_list(list(methods)), options)
