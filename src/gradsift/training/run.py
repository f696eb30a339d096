"""`train`: fine-tune a LoRA adapter on a data file (SFT on examples, DPO on preference pairs).

The Python API behind ``gradsift train``: a thin layer that reads the data, loads the model and hands both
to `gradsift.training.sft.train_sft` or `gradsift.training.dpo.train_dpo`, which write the run directory
(``config.json``, ``train_log.jsonl``, ``adapter/``, ``result.json``), refuse to mix settings and resume from
the last checkpoint after a kill. This module adds the flat, CLI-sized settings (`TrainConfig`), turns them
into TRL's config, and writes ``train_settings.json`` (these settings, the model's provenance) once a run is
done.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from gradsift.atomic import write_json_atomic
from gradsift.data.load import OnInvalid, load_examples, load_pairs
from gradsift.data.records import Example, Kind, Pair
from gradsift.model.load import MODEL_HELP, DType, LoadedModel, ModelSettings, load_model
from gradsift.model.lora import LoraSettings
from gradsift.rundir import locked_dir
from gradsift.settings import check_fields, setting

# the trainer stack loads when a run starts: the settings (and ``gradsift train --help``) stay light
if TYPE_CHECKING:
    from gradsift.training.common import TrainResult

SETTINGS_FILE = "train_settings.json"


@dataclass
class TrainConfig:
    """Settings of one fine-tuning run.

    Attributes:
        data: Training data: JSONL/JSON/CSV/TSV/Parquet (optionally .gz), a saved dataset dir or ``hf:name``.
        out: Run directory (adapter, log, config; resumable).
        kind: ``sft`` (examples, loss on the responses) or ``pair`` (preference pairs, DPO).
        model: ``builtin``, a local directory, a ``.gguf`` file or a hub id.
        dtype: Model dtype (``auto``: bfloat16 on capable GPUs, float32 on CPU).
        device: ``auto``, ``cpu`` or ``cuda[:N]``; ``cpu`` also keeps the trainer off a present GPU.
        fmt: Force the data format instead of detecting it.
        limit: Train on the first N records only (0: all).
        on_invalid: ``raise`` at the first invalid record, or ``skip`` invalid records with a warning.
        epochs: Passes over the data (fractions allowed).
        max_steps: Stop after this many optimizer steps (overrides `epochs`; -1: no limit).
        lr: Peak learning rate (linear decay). 1e-4 suits LoRA on small models for both SFT and DPO.
        batch_size: Examples (SFT) or pairs (DPO) per device and step.
        grad_accum: Gradient accumulation steps (effective batch = batch_size x grad_accum x devices).
        max_length: Token limit per sequence; longer ones are truncated as `train_sft`/`train_dpo` describe.
        warmup: Learning-rate warm-up: a fraction of the steps when below 1, else a number of steps.
        lora_rank: LoRA rank.
        lora_alpha: LoRA alpha.
        lora_dropout: LoRA dropout.
        lora_targets: Modules to adapt (``["all-linear"]`` for every linear layer but the head).
        beta: DPO temperature (``pair`` only).
        seed: Seed of the trainer (data order, LoRA initialisation).
        save_steps: Checkpoint every N steps so a killed run resumes; the last two are kept until the end.
        logging_steps: Write a ``train_log.jsonl`` line every N steps.
        progress: Show TRL's progress bar.
        resume: Resume an unfinished run with the same settings from its last checkpoint.
        overwrite: Replace a run with other settings in `out`, or retrain a finished one.
        options: Further `trl.SFTConfig` / `trl.DPOConfig` fields by name; they override the fields above.
    """

    data: str = setting(help="training data: JSONL/JSON/CSV/TSV/Parquet (optionally .gz), dataset dir or hf:NAME")
    out: str = setting(help="run directory")
    kind: Literal["sft", "pair"] = setting("sft", help="sft examples or preference pairs (DPO)")
    model: str = setting("builtin", help=MODEL_HELP, group="model")
    dtype: DType = setting("auto", help="model dtype", group="model")
    device: str = setting("auto", help="auto, cpu, cuda or cuda:N", group="model")
    fmt: str | None = setting(None, help="force the data format")
    limit: int = setting(0, help="train on the first N records only (0: all)")
    on_invalid: OnInvalid = setting("raise", help="stop at or skip invalid records and lines")
    epochs: float = setting(1.0, help="passes over the data")
    max_steps: int = setting(-1, help="stop after N optimizer steps (overrides --epochs; -1: no limit)")
    lr: float = setting(1e-4, help="peak learning rate")
    batch_size: int = setting(4, help="examples or pairs per step and device")
    grad_accum: int = setting(1, help="gradient accumulation steps")
    max_length: int = setting(256, help="token limit per sequence")
    warmup: float = setting(0.0, help="lr warm-up: fraction of steps (<1) or steps")
    lora_rank: int = setting(8, help="LoRA rank")
    lora_alpha: int = setting(16, help="LoRA alpha")
    lora_dropout: float = setting(0.0, help="LoRA dropout")
    lora_targets: list[str] = setting(
        default_factory=lambda: ["q_proj", "v_proj"], help="modules to adapt, comma-separated (or all-linear)"
    )
    beta: float = setting(0.1, help="DPO temperature")
    seed: int = setting(0, help="trainer seed")
    save_steps: int = setting(25, help="checkpoint every N steps for resuming")
    logging_steps: int = setting(1, help="log every N steps")
    progress: bool = setting(True, help="no progress bar", flag="--no-progress")
    resume: bool = setting(True, help="start over instead of resuming an unfinished run", flag="--no-resume")
    overwrite: bool = setting(False, help="replace a run with other settings, or retrain")
    options: dict[str, Any] = setting(default_factory=dict, help="further SFTConfig/DPOConfig field", flag="--option")

    def __post_init__(self) -> None:
        check_fields(self)
        if self.limit < 0:
            raise ValueError(f"limit must be >= 0 (0 means all records), got {self.limit}")
        if not self.epochs > 0:
            raise ValueError(f"epochs must be positive, got {self.epochs}")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"max_steps must be -1 (no limit) or a positive number of steps, got {self.max_steps}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError(f"batch_size and grad_accum must be >= 1, got {self.batch_size} and {self.grad_accum}")
        if self.max_length < 8:
            raise ValueError(f"max_length must be at least 8 tokens, got {self.max_length}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0 (a fraction below 1, else steps), got {self.warmup}")
        if not self.beta > 0:
            raise ValueError(f"beta must be positive, got {self.beta}")
        if self.save_steps < 1 or self.logging_steps < 1:
            raise ValueError("save_steps and logging_steps must be >= 1")
        self.lora_settings()
        ModelSettings(model=self.model, dtype=self.dtype, device=self.device)

    def model_settings(self) -> ModelSettings:
        return ModelSettings(model=self.model, dtype=self.dtype, device=self.device)

    def lora_settings(self) -> LoraSettings:
        return LoraSettings(
            rank=self.lora_rank, alpha=self.lora_alpha, dropout=self.lora_dropout, target_modules=self.lora_targets
        )

    def trainer_config(self) -> dict[str, Any]:
        """The `SFTConfig` / `DPOConfig` overrides these settings stand for (on top of gradsift's defaults)."""
        cfg: dict[str, Any] = {
            "num_train_epochs": float(self.epochs),
            "max_steps": self.max_steps,
            "learning_rate": self.lr,
            "per_device_train_batch_size": self.batch_size,
            "gradient_accumulation_steps": self.grad_accum,
            "max_length": self.max_length,
            # transformers 5 reads a warmup_steps below 1 as a fraction of the total steps
            "warmup_steps": self.warmup if self.warmup < 1 else int(self.warmup),
            "seed": self.seed,
            "save_strategy": "steps",
            "save_steps": self.save_steps,
            "save_total_limit": 2,
            "logging_steps": self.logging_steps,
            "disable_tqdm": not self.progress,
        }
        if self.model_settings().resolve_device().type == "cpu":
            cfg["use_cpu"] = True
        cfg.update(self.options)
        return cfg


def read_training_data(cfg: TrainConfig) -> list[Example] | list[Pair]:
    """The records `cfg` names: examples for ``sft``, pairs for ``pair``, cut to `cfg.limit`.

    Raises:
        DataError: The data is missing, unreadable or malformed (file, line and field named).
    """
    records: list[Example] | list[Pair]
    if cfg.kind == "pair":
        records = load_pairs(cfg.data, fmt=cfg.fmt, on_invalid=cfg.on_invalid)
    else:
        records = load_examples(cfg.data, kind=Kind.SFT, fmt=cfg.fmt, on_invalid=cfg.on_invalid)
    return records[: cfg.limit] if cfg.limit else records


def run_train(
    cfg: TrainConfig,
    records: list[Example] | list[Pair] | None = None,
    loaded: LoadedModel | None = None,
    reference_cache: str | Path | None = None,
) -> TrainResult:
    """Fine-tune a LoRA adapter as `cfg` says.

    Args:
        cfg: The settings.
        records: Training records to use instead of reading `cfg.data` (examples for ``sft``, pairs for ``pair``).
        loaded: A loaded base model to train (an adapter is added to it in place) instead of loading `cfg.model`.
        reference_cache: ``pair``: a directory of the base model's DPO reference log-probabilities, shared by
            the runs of one base model (`gradsift.training.dpo.attach_reference`); ignored for ``sft``.

    Returns:
        The training result; ``result.model`` is the model with the trained adapter, ready for evaluation.

    Raises:
        ValueError: Bad settings, other settings in `cfg.out` without `overwrite`, or no trainable records.
        DataError: Unreadable or malformed training data.
        RunDirBusy: Another process runs in `cfg.out`.
    """
    # the directory is locked before the data is read: a second run into it fails at once
    with locked_dir(cfg.out):
        return _train(cfg, records, loaded, reference_cache)


def _train(
    cfg: TrainConfig,
    records: list[Example] | list[Pair] | None,
    loaded: LoadedModel | None,
    reference_cache: str | Path | None,
) -> TrainResult:
    from gradsift.training.dpo import train_dpo
    from gradsift.training.sft import train_sft

    data = records if records is not None else read_training_data(cfg)
    if cfg.kind == "pair" and not all(isinstance(r, Pair) for r in data):
        raise ValueError("kind 'pair' trains on preference pairs; the records given are SFT examples")
    if cfg.kind == "sft" and not all(isinstance(r, Example) for r in data):
        raise ValueError("kind 'sft' trains on examples; the records given are preference pairs")
    lm = loaded if loaded is not None else load_model(cfg.model_settings())
    lora = cfg.lora_settings()
    common = {"lora": lora, "config": cfg.trainer_config(), "resume": cfg.resume, "overwrite": cfg.overwrite}
    if cfg.kind == "pair":
        result = train_dpo(
            lm.model,
            lm.tokenizer,
            data,  # type: ignore[arg-type]
            cfg.out,
            beta=cfg.beta,
            reference_cache=reference_cache,
            **common,  # type: ignore[arg-type]
        )
    else:
        result = train_sft(lm.model, lm.tokenizer, data, cfg.out, **common)  # type: ignore[arg-type]
    settings = {
        "settings": asdict(cfg),
        "model": lm.describe(),
        "n_records": len(data),
        "result": result.as_dict(),
    }
    write_json_atomic(Path(cfg.out) / SETTINGS_FILE, settings)
    return result
