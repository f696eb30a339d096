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
from gradsift.model.lora import LoraSettings
from gradsift.training.common import (
    ADAPTER_DIR,
    CONFIG_FILE,
    LOG_FILE,
    RESULT_FILE,
    DataCounts,
    RunState,
    TrainResult,
    finish_run,
    is_peft_model,
    make_config,
    prepare_run_dir,
    reuse_result,
    run_config,
    run_trainer,
)

SFT_OWNED = (CONFIG_FILE, LOG_FILE, RESULT_FILE, ADAPTER_DIR, "README.md")


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
    from trl import SFTConfig

    cfg = make_config(SFTConfig, config, out_dir)
    dataset, counts = sft_dataset(tokenizer, examples, cfg.max_length, truncation)
    return make_sft_trainer(model, tokenizer, cfg, dataset, _lora_for(model, lora), callbacks), counts


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
        peft_config=lora.to_peft() if lora is not None else None,
        callbacks=callbacks,
    )


def _lora_for(model: Any, lora: LoraSettings | None) -> LoraSettings | None:
    """The LoRA settings to add to `model`: None for a model that already has an adapter."""
    if is_peft_model(model):
        if lora is not None:
            raise ValueError("the model already has a LoRA adapter: pass lora=None to train it, or the base model")
        return None
    return lora or LoraSettings()


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
    from trl import SFTConfig

    out_dir = Path(out_dir)
    lora = _lora_for(model, lora)
    cfg = make_config(SFTConfig, config, out_dir)
    dataset, counts = sft_dataset(tokenizer, examples, cfg.max_length, truncation)
    rc = run_config("sft", cfg, model, tokenizer, lora, examples, truncation=truncation, data=counts.as_dict())
    state, ckpt = prepare_run_dir(out_dir, rc, RESULT_FILE, SFT_OWNED, resume, overwrite)
    if state is RunState.DONE:
        return reuse_result(out_dir, model)
    counts.warn(f"SFT data for {out_dir}")
    trainer = make_sft_trainer(model, tokenizer, cfg, dataset, lora, callbacks)
    output = run_trainer(trainer, out_dir, ckpt)
    return finish_run(trainer, tokenizer, out_dir, output, ckpt, counts)
