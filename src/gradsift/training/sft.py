"""LoRA supervised fine-tuning with TRL's `SFTTrainer`, on gradsift's own tokenisation.

The trainer gets a pre-tokenised dataset (``input_ids`` and ``labels`` with -100 outside the assistant
turns) built by `gradsift.data.tokenize.encode_examples`, so the tokens the training loss covers are exactly
the tokens the selection's per-example losses and gradients cover (same template, same truncation).
TRL uses a ``labels`` column as given.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gradsift.data.records import Example
from gradsift.data.tokenize import Truncation, encode_examples
from gradsift.model.lora import LoraSettings, lora_to_add
from gradsift.training.common import DataCounts, RunPlan, TrainResult, make_config, train_adapter


def sft_dataset(
    tokenizer: Any, examples: Sequence[Example], max_length: int | None, truncation: Truncation = "right"
) -> tuple[Any, DataCounts]:
    """Tokenise examples into the pre-tokenised dataset `SFTTrainer` trains on.

    Args:
        tokenizer: The model's tokenizer.
        examples: Training examples (loss on their assistant turns).
        max_length: Longest sequence in tokens; None for no limit.
        truncation: gradsift's truncation policy (see `gradsift.data.tokenize`).

    Returns:
        A `datasets.Dataset` with columns ``input_ids`` and ``labels`` (-100 where no loss applies), one row
        per example, and the count of truncated examples. (gradsift's truncation always keeps a response
        token, so TRL's silent dropping of examples without one never applies.)

    Raises:
        ValueError: No examples.
    """
    from datasets import Dataset

    if not examples:
        raise ValueError("no examples to train on")
    encoded, _ = encode_examples(tokenizer, examples, max_length or sys.maxsize, truncation)
    counts = DataCounts()
    for ex, enc in zip(examples, encoded, strict=True):
        counts.add(ex.id, enc.truncated, dropped=False)
    rows = {"input_ids": [e.input_ids for e in encoded], "labels": [e.labels for e in encoded]}
    return Dataset.from_dict(rows), counts


def plan_sft(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    out_dir: str | Path,
    lora: LoraSettings | None,
    config: Any,
    truncation: Truncation,
) -> RunPlan:
    """The SFT run `train_sft` trains (arguments as there): its config, dataset and LoRA to add.

    Raises:
        ValueError: No examples, bad config overrides, or `lora` for a model that already has an adapter.
    """
    from trl import SFTConfig

    out_dir = Path(out_dir)
    lora = lora_to_add(model, lora)
    cfg = make_config(SFTConfig, config, out_dir)
    dataset, counts = sft_dataset(tokenizer, examples, cfg.max_length, truncation)
    return RunPlan(out_dir, cfg, dataset, counts, lora)


def make_sft_trainer(
    model: Any, tokenizer: Any, cfg: Any, dataset: Any, lora: LoraSettings | None, callbacks: list[Any] | None
) -> Any:
    """An `SFTTrainer` on a dataset from `sft_dataset`; `lora` None trains the adapter `model` already has."""
    from trl import SFTTrainer

    return SFTTrainer(
        model=model,
        args=cfg,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora.to_peft(model) if lora is not None else None,
        callbacks=callbacks,
    )


def build_sft_trainer(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    out_dir: str | Path,
    lora: LoraSettings | None = None,
    config: Any = None,
    *,
    truncation: Truncation = "right",
    callbacks: list[Any] | None = None,
) -> tuple[Any, DataCounts]:
    """Set up the `SFTTrainer` that `train_sft` runs, without training (arguments as in `train_sft`).

    Returns:
        The trainer (its model is the peft model) and the data counts.
    """
    plan = plan_sft(model, tokenizer, examples, out_dir, lora, config, truncation)
    return make_sft_trainer(model, tokenizer, plan.config, plan.dataset, plan.lora, callbacks), plan.counts


def train_sft(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    out_dir: str | Path,
    lora: LoraSettings | None = None,
    config: Any = None,
    *,
    truncation: Truncation = "right",
    resume: bool = True,
    overwrite: bool = False,
    callbacks: list[Any] | None = None,
) -> TrainResult:
    """Fine-tune a LoRA adapter on `examples` with TRL's `SFTTrainer`, loss on the response tokens only.

    Writes to `out_dir`: ``config.json`` (TRL settings, LoRA settings, model/tokenizer/data fingerprints,
    truncation counts), ``train_log.jsonl`` (step, loss, lr, epoch, time), ``adapter/`` (the adapter and the
    tokenizer) and ``result.json``. TRL's ``checkpoint-*`` folders exist while the run is unfinished: a rerun
    with the same settings resumes from the last complete one (the global step continues), and they are
    deleted once the run is done. A finished run with the same settings is reused, not retrained.

    Args:
        model: A transformers causal LM (an adapter is added to it in place, from `lora`) or a peft model
            whose adapter is trained as is (then `lora` must be None).
        tokenizer: Its tokenizer.
        examples: Training examples.
        out_dir: Run directory.
        lora: LoRA settings for a base model; default `LoraSettings()`.
        config: `trl.SFTConfig` overrides as a dict (on top of gradsift's defaults: ``report_to="none"``, bf16 and
            gradient checkpointing off on CPU) or an `SFTConfig`. ``max_length`` (TRL default 1024) bounds the
            tokenised examples.
        truncation: gradsift's truncation policy for examples longer than ``max_length``.
        resume: Resume an unfinished run with the same settings from its last checkpoint.
        overwrite: Replace a run with different settings, or retrain a finished one.
        callbacks: Extra `transformers.TrainerCallback`s.

    Returns:
        The result; ``result.model`` is the trained peft model.

    Raises:
        ValueError: Different settings in `out_dir` without `overwrite`, no trainable examples, bad overrides,
            or `lora` given for a model that already has an adapter.
    """
    plan = plan_sft(model, tokenizer, examples, out_dir, lora, config, truncation)
    identity = plan.identity("sft", model, tokenizer, examples, truncation=truncation)
    return train_adapter(
        plan,
        identity,
        lambda: make_sft_trainer(model, tokenizer, plan.config, plan.dataset, plan.lora, callbacks),
        model,
        tokenizer,
        what="SFT data",
        resume=resume,
        overwrite=overwrite,
    )
