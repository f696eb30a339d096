"""`evaluate`: score a model (optionally with a LoRA adapter) on one task and write the results as JSON.

The Python API behind ``gradsift evaluate``: reads the task's records, loads the model and adapter, runs the
task's function (`TASKS`; the kinds are described in `gradsift.evaluation.tasks`) and writes its result dict
(metrics plus one entry per record with the prompt, the output or choice, the reference and whether it was
right) with this run's settings, the model's provenance and the time taken.

Records per task:
  - ``gsm8k``, ``bbh``, ``utility``, ``target_loss``: examples with reference answers (any format
    `gradsift.data.load.load_examples` reads; BIG-Bench-Hard's ``{"examples": [{input, target}]}`` files too).
  - ``multiple_choice``: MMLU-style (``question``, ``choices``, ``answer`` index or letter) or ARC-style
    (``choices: {text, label}``, ``answerKey``) records, see `gradsift.data.records.MCItem.from_record`.
  - ``refusal``: prompts only (`gradsift.data.load.read_prompts`): a ``.txt`` file with one prompt per line,
    or records with a prompt column (``prompt``, ``goal`` as in AdvBench, ``question``, ``instruction``,
    ``query``, ``input``, or `prompt_field`) or with chat turns; any response column is ignored.
  - ``preference``: preference pairs (`gradsift.data.load.load_pairs`); needs an adapter, whose disabled
    state is the reference model.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gradsift.data.load import OnInvalid, load_examples, load_pairs, read_mc_items, read_prompts
from gradsift.data.records import Example, Kind, MCItem, Pair
from gradsift.evaluation.generate import GenerationSettings
from gradsift.evaluation.generation_tasks import evaluate_bbh, evaluate_gsm8k, evaluate_refusal
from gradsift.evaluation.loss_tasks import evaluate_preference, evaluate_target_loss, evaluate_utility
from gradsift.evaluation.multiple_choice import MCFormat, Normalisation, evaluate_multiple_choice
from gradsift.evaluation.refusal import PhraseRefusalJudge, RefusalJudge
from gradsift.evaluation.tasks import BBH_COT_TEMPLATE, ScoringSettings, TaskKind, read_cot_prompt, write_results
from gradsift.model.load import MODEL_HELP, DType, LoadedModel, ModelSettings, load_model
from gradsift.settings import check_fields, setting

TASK_ALIASES = {
    "mc": TaskKind.MULTIPLE_CHOICE,
    "multiple-choice": TaskKind.MULTIPLE_CHOICE,
    "target-loss": TaskKind.TARGET_LOSS,
}
"""Command-line spellings of task kinds besides their values."""

TASK_NAMES = (*(t.value for t in TaskKind), *TASK_ALIASES)
"""Every name `parse_task` reads."""

TASKS: dict[TaskKind, Callable[..., dict[str, Any]]] = {
    TaskKind.GSM8K: evaluate_gsm8k,
    TaskKind.BBH: evaluate_bbh,
    TaskKind.MULTIPLE_CHOICE: evaluate_multiple_choice,
    TaskKind.REFUSAL: evaluate_refusal,
    TaskKind.UTILITY: evaluate_utility,
    TaskKind.PREFERENCE: evaluate_preference,
    TaskKind.TARGET_LOSS: evaluate_target_loss,
}
"""The evaluation function of each task kind."""


def parse_task(value: str | TaskKind) -> TaskKind:
    """The task kind named by `value` (a `TaskKind` value or an alias such as ``mc``, ``target-loss``).

    Raises:
        ValueError: No such task.
    """
    if isinstance(value, TaskKind):
        return value
    name = str(value).strip().lower()
    if name in TASK_ALIASES:
        return TASK_ALIASES[name]
    try:
        return TaskKind(name.replace("-", "_"))
    except ValueError:
        names = sorted({t.value for t in TaskKind} | set(TASK_ALIASES))
        raise ValueError(f"unknown task {value!r}; choose from {', '.join(names)}") from None


@dataclass
class EvaluateConfig:
    """Settings of one evaluation.

    Attributes:
        task: Task kind (`gradsift.evaluation.tasks.TaskKind` value or an alias: ``mc``, ``target-loss``).
        data: The task's records (see the module docstring).
        out: Results JSON to write (None: only return the results).
        model: ``builtin``, a local directory, a ``.gguf`` file or a hub id (the base model).
        adapter: LoRA adapter directory to evaluate on top of the model (e.g. ``gradsift train``'s ``adapter/``).
        dtype: Model dtype.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        fmt: Force the data format instead of detecting it.
        split: Part of a source with named parts (a JSON key, a dataset split).
        task_label: Task label given to every record (e.g. the BIG-Bench-Hard subtask of a file).
        prompt_field: Refusal: the prompt column, when none of the usual names.
        limit: Evaluate the first N records only (0: all).
        on_invalid: ``raise`` at the first invalid record, or ``skip`` invalid records with a warning.
        max_new_tokens: Generation budget per output (generation tasks).
        gen_batch_size: Prompts decoded together.
        fewshot: Few-shot context: a ``.txt`` prompt prefix (a BIG-Bench-Hard ``cot-prompts`` file; its canary
            header is dropped) or a data file whose first `fewshot_n` examples become demonstration turns.
        fewshot_n: Demonstrations taken from a few-shot data file (0: all).
        template: Question template with ``{question}``; default ``BBH_COT_TEMPLATE`` for ``bbh`` with a text
            few-shot prompt (the form the cot-prompts files use), else ``{question}``.
        max_length: Token limit per scored sequence (likelihood tasks).
        batch_size: Sequences (pairs, for ``preference``) per forward pass in likelihood tasks.
        mc_format: ``text`` (score each option's text) or ``letter`` (list lettered options, score letters).
        normalisation: Multiple choice: ``token``, ``char`` or ``sum`` normalised log-likelihood.
        beta: DPO temperature of the preference margins.
        utility_generate: Utility: also generate and report exact match.
        refusal_window: Refusal: leading characters of a response the phrase judge reads.
        progress: Show progress bars.
    """

    task: str = setting(help="task kind", choices=TASK_NAMES)
    data: str = setting(help="the task's records (file, dataset dir or hf:NAME; refusal: also a .txt of prompts)")
    out: str | None = setting(None, help="results JSON file")
    model: str = setting("builtin", help=MODEL_HELP, group="model")
    adapter: str | None = setting(None, help="LoRA adapter directory (e.g. a gradsift train run's adapter/)")
    dtype: DType = setting("auto", help="model dtype", group="model")
    device: str = setting("auto", help="auto, cpu, cuda or cuda:N", group="model")
    fmt: str | None = setting(None, help="force the data format")
    split: str | None = setting(None, help="part of a source with named parts")
    task_label: str | None = setting(None, help="task label for every record (per-task metrics)")
    prompt_field: str | None = setting(None, help="refusal: the prompt column")
    limit: int = setting(0, help="evaluate the first N records only (0: all)")
    on_invalid: OnInvalid = setting("raise", help="stop at or skip invalid records and lines")
    max_new_tokens: int = setting(256, help="generation budget per output")
    gen_batch_size: int = setting(8, help="prompts decoded together")
    fewshot: str | None = setting(None, help="few-shot context: a .txt prompt prefix (BBH cot-prompts) or a data file")
    fewshot_n: int = setting(3, help="demonstrations taken from a few-shot data file (0: all)")
    template: str | None = setting(None, help="question template with {question}")
    max_length: int = setting(1024, help="token limit per scored sequence")
    batch_size: int = setting(8, help="sequences per forward pass in likelihood tasks")
    mc_format: MCFormat = setting("text", help="mc: score option texts or letters")
    normalisation: Normalisation = setting("token", help="mc log-likelihood normalisation")
    beta: float = setting(0.1, help="preference: DPO temperature")
    utility_generate: bool = setting(False, help="utility: also generate and report exact match")
    refusal_window: int = setting(200, help="refusal: leading characters the judge reads")
    progress: bool = setting(True, help="no progress bar", flag="--no-progress")

    def __post_init__(self) -> None:
        self.task = parse_task(self.task).value  # aliases and any case, named when unknown
        check_fields(self)
        if self.limit < 0:
            raise ValueError(f"limit must be >= 0 (0 means all records), got {self.limit}")
        if self.fewshot_n < 0:
            raise ValueError(f"fewshot_n must be >= 0 (0 means all), got {self.fewshot_n}")
        if self.template is not None and "{question}" not in self.template:
            raise ValueError(f"template must contain '{{question}}', got {self.template!r}")
        if not self.beta > 0:
            raise ValueError(f"beta must be positive, got {self.beta}")
        self.generation()
        self.scoring()
        PhraseRefusalJudge(window=self.refusal_window)
        ModelSettings(model=self.model, dtype=self.dtype, device=self.device)

    @property
    def kind(self) -> TaskKind:
        return TaskKind(self.task)

    def model_settings(self) -> ModelSettings:
        return ModelSettings(model=self.model, dtype=self.dtype, device=self.device)

    def generation(self) -> GenerationSettings:
        return GenerationSettings(max_new_tokens=self.max_new_tokens, batch_size=self.gen_batch_size)

    def scoring(self) -> ScoringSettings:
        return ScoringSettings(max_length=self.max_length, batch_size=self.batch_size)

    def resolved_template(self) -> str:
        if self.template is not None:
            return self.template
        text_prefix = self.fewshot is not None and Path(self.fewshot).suffix == ".txt"
        return BBH_COT_TEMPLATE if self.kind is TaskKind.BBH and text_prefix else "{question}"


Records = list[Example] | list[Pair] | list[MCItem]


def read_task_records(cfg: EvaluateConfig) -> Records:
    """The records of `cfg.data` in the form `cfg.task` needs, cut to `cfg.limit`.

    Raises:
        DataError: The data is missing, unreadable or malformed for the task (file, line and field named).
    """
    kind = cfg.kind
    records: Records
    if kind is TaskKind.PREFERENCE:
        records = load_pairs(cfg.data, fmt=cfg.fmt, split=cfg.split, on_invalid=cfg.on_invalid)
    elif kind is TaskKind.MULTIPLE_CHOICE:
        records = read_mc_items(cfg.data, cfg.split, cfg.on_invalid)
        if cfg.task_label is not None:
            for item in records:
                item.task = cfg.task_label
    elif kind is TaskKind.REFUSAL:
        records = read_prompts(cfg.data, cfg.prompt_field, cfg.split)
    else:
        records = load_examples(
            cfg.data, kind=Kind.TARGET, fmt=cfg.fmt, split=cfg.split, task=cfg.task_label, on_invalid=cfg.on_invalid
        )
    return records[: cfg.limit] if cfg.limit else records


def read_fewshot(cfg: EvaluateConfig) -> str | list[tuple[str, str]] | None:
    """The few-shot context `cfg.fewshot` names: a text prefix or ``(question, answer)`` demonstrations."""
    if cfg.fewshot is None:
        return None
    path = Path(cfg.fewshot)
    if path.suffix == ".txt":
        if not path.is_file():
            raise FileNotFoundError(f"{path}: few-shot prompt file not found")
        return read_cot_prompt(path)
    demos = load_examples(path, kind=Kind.TARGET)
    demos = demos[: cfg.fewshot_n] if cfg.fewshot_n else demos
    return [
        (next(m["content"] for m in reversed(d.prompt_messages) if m["role"] == "user"), d.response) for d in demos
    ]


def evaluate_records(
    model: Any,
    tokenizer: Any,
    cfg: EvaluateConfig,
    records: Records,
    judge: RefusalJudge | None = None,
    reference_cache: str | Path | None = None,
) -> dict[str, Any]:
    """Run `cfg.task` on `records` with `model` (its adapter, if any, active).

    Args:
        model: Causal LM (a peft model for ``preference``: its disabled adapter is the reference).
        tokenizer: Its tokenizer.
        cfg: Task and settings.
        records: What `read_task_records` returns for the task.
        judge: Refusal judge; default the phrase judge with `cfg.refusal_window`.
        reference_cache: ``preference``: file of the reference log-probabilities, read or written
            (`evaluate_preference`).

    Returns:
        The task's result dict (``task``, ``n``, ``metrics``, ``examples``).
    """
    kind = cfg.kind
    if not records:
        raise ValueError(f"no records to evaluate for task {kind.value}")
    fewshot = read_fewshot(cfg)
    template = cfg.resolved_template()
    data: Any = records
    if kind is TaskKind.GSM8K:
        return evaluate_gsm8k(model, tokenizer, data, fewshot, template, cfg.generation(), cfg.progress)
    if kind is TaskKind.BBH:
        return evaluate_bbh(model, tokenizer, data, fewshot, template, cfg.generation(), cfg.progress)
    if kind is TaskKind.MULTIPLE_CHOICE:
        return evaluate_multiple_choice(
            model, tokenizer, data, cfg.mc_format, cfg.normalisation, fewshot, batch_size=cfg.batch_size
        )
    if kind is TaskKind.REFUSAL:
        judge = judge or PhraseRefusalJudge(window=cfg.refusal_window)
        return evaluate_refusal(model, tokenizer, data, judge, cfg.generation(), cfg.progress)
    if kind is TaskKind.UTILITY:
        generation = cfg.generation() if cfg.utility_generate else None
        return evaluate_utility(model, tokenizer, data, cfg.scoring(), generation, cfg.progress)
    if kind is TaskKind.PREFERENCE:
        return evaluate_preference(model, tokenizer, data, cfg.beta, cfg.scoring(), reference_cache=reference_cache)
    return evaluate_target_loss(model, tokenizer, data, cfg.scoring())


def load_evaluated_model(cfg: EvaluateConfig) -> LoadedModel:
    """The base model with `cfg.adapter` loaded on it (frozen), or the base model alone.

    Raises:
        FileNotFoundError: The adapter directory holds no peft adapter.
    """
    from gradsift.model.lora import load_adapter

    if cfg.adapter is not None and not (Path(cfg.adapter) / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{cfg.adapter}: no adapter_config.json, not a LoRA adapter directory")
    lm = load_model(cfg.model_settings())
    if cfg.adapter is None:
        return lm
    return dataclasses.replace(lm, model=load_adapter(lm.model, cfg.adapter, trainable=False))


def run_evaluate(
    cfg: EvaluateConfig,
    records: Records | None = None,
    loaded: LoadedModel | None = None,
    judge: RefusalJudge | None = None,
    reference_cache: str | Path | None = None,
) -> dict[str, Any]:
    """Evaluate a model on one task as `cfg` says and write the results to `cfg.out` (when set).

    Args:
        cfg: Settings.
        records: Records to use instead of reading `cfg.data` (the form `read_task_records` returns).
        loaded: A model to evaluate instead of loading `cfg.model` and `cfg.adapter`.
        judge: Refusal judge (default: the phrase judge).
        reference_cache: ``preference``: file of the reference log-probabilities, read when it exists, else
            written (`gradsift.evaluation.loss_tasks.evaluate_preference`).

    Returns:
        The task's result dict plus ``config`` (these settings), ``model`` (provenance), ``adapter`` and
        ``seconds``.

    Raises:
        ValueError: ``preference`` without an adapter, or no records.
        DataError: Unreadable or malformed data.
        FileNotFoundError: A missing adapter or few-shot file.
    """
    if cfg.kind is TaskKind.PREFERENCE and loaded is None and cfg.adapter is None:
        raise ValueError("the preference task needs --adapter: the reference model is the adapter disabled")
    t0 = time.perf_counter()
    data = records if records is not None else read_task_records(cfg)
    lm = loaded if loaded is not None else load_evaluated_model(cfg)
    result = evaluate_records(lm.model, lm.tokenizer, cfg, data, judge, reference_cache)
    result["config"] = asdict(cfg)
    result["model"] = lm.describe()
    result["adapter"] = cfg.adapter
    result["seconds"] = round(time.perf_counter() - t0, 3)
    if cfg.out is not None:
        write_results(cfg.out, result)
    return result
