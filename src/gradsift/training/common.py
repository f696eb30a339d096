"""What the SFT, DPO and warm-up runs share: TRL configs with CPU-safe defaults, run directories that
refuse to mix settings and resume after a kill, the training log, data counts, and the life of a run
(`execute_run`: check the directory, reuse a finished run or train, resuming, and finish).

A run directory holds ``config.json`` (the settings, data and model fingerprints that produced it),
``train_log.jsonl`` (one line per logged step), TRL's ``checkpoint-*`` folders while the run is
unfinished, and a completion file (``result.json``; ``warmup.json`` for a warm-up) once it is done.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

import torch
from transformers import TrainerCallback, TrainingArguments

from gradsift.atomic import write_json_atomic, write_text_atomic
from gradsift.data.records import fingerprint
from gradsift.model.lora import LoraSettings, is_peft_model, load_adapter
from gradsift.rundir import LOCK_FILE, locked_dir
from gradsift.settings import check_same_settings, settings_hash

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
LOG_FILE = "train_log.jsonl"
RESULT_FILE = "result.json"
ADAPTER_DIR = "adapter"
# What an SFT or DPO run writes in its directory (``overwrite`` deletes these and nothing else); the last is
# `gradsift.training.run`'s record of the flat settings.
RUN_OWNED = (CONFIG_FILE, LOG_FILE, RESULT_FILE, ADAPTER_DIR, "README.md", "train_settings.json")
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
# Settings that change how a run is logged or saved, not what it learns: a resumed run may change them.
_BOOKKEEPING_KEYS = re.compile(r"^(output_dir|logging_.*|run_name|save_.*|report_to|disable_tqdm|push_to_hub|hub_.*)$")

ConfigT = TypeVar("ConfigT", bound=TrainingArguments)
R = TypeVar("R")


def device_defaults(config_cls: type[TrainingArguments]) -> dict[str, Any]:
    """Precision and activation-checkpointing defaults for the device training will run on.

    TRL turns on bf16 and gradient checkpointing by default; on a CPU both make a LoRA step many times
    slower, so they are off there. On CUDA, bf16 when the GPU supports it and checkpointing (TRL's choice).
    Other accelerators get the CPU settings; pass overrides to change them.

    Args:
        config_cls: The TRL config class, to pick the checkpointing field name this transformers version uses.

    Returns:
        Keyword arguments for `config_cls`.
    """
    cuda = torch.cuda.is_available()
    names = {f.name for f in dataclasses.fields(config_cls)}
    # transformers 5 renamed gradient_checkpointing to activation_checkpointing and warns on the old name.
    ckpt = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    # Pinned memory only helps copies to an accelerator; on a CPU torch warns about it at every epoch.
    return {"bf16": bool(cuda and torch.cuda.is_bf16_supported()), ckpt: cuda, "dataloader_pin_memory": cuda}


def make_config(
    config_cls: type[ConfigT],
    config: ConfigT | dict[str, Any] | None,
    out_dir: str | Path,
    defaults: dict[str, Any] | None = None,
    required: dict[str, Any] | None = None,
) -> ConfigT:
    """Build a TRL config (`SFTConfig`, `DPOConfig`) for a run in `out_dir`.

    Args:
        config_cls: The config class.
        config: Overrides as a dict (on top of gradsift's defaults), or a ready config object, used as given
            except that its `output_dir` becomes `out_dir`.
        out_dir: The run directory.
        defaults: gradsift's defaults for this kind of run, below the user's overrides.
        required: Values the run depends on (e.g. a warm-up's per-epoch saving); an override that contradicts
            one is refused.

    Returns:
        The config, with ``report_to="none"`` unless overridden.

    Raises:
        TypeError: `config` is neither None, a dict nor a `config_cls`.
        ValueError: An unknown field, a different `output_dir`, or a contradiction of `required`.
    """
    required = required or {}
    if isinstance(config, config_cls):
        for key, value in required.items():
            if getattr(config, key) != value:
                raise ValueError(f"{config_cls.__name__}.{key} is {getattr(config, key)!r}; this run needs {value!r}")
        cfg = config if config.output_dir == str(out_dir) else dataclasses.replace(config, output_dir=str(out_dir))
        if not torch.cuda.is_available() and (cfg.bf16 or cfg.gradient_checkpointing):
            log.warning(
                "training on CPU with bf16=%s and gradient_checkpointing=%s: both make CPU steps many times slower; "
                "pass the settings as a dict to get gradsift's CPU defaults",
                cfg.bf16,
                cfg.gradient_checkpointing,
            )
        return cfg
    if config is not None and not isinstance(config, dict):
        raise TypeError(f"config must be a dict or a {config_cls.__name__}, got {type(config).__name__}")
    overrides = dict(config or {})
    known = {f.name for f in dataclasses.fields(config_cls) if f.init}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown {config_cls.__name__} field(s): {', '.join(unknown)}")
    if "output_dir" in overrides and str(overrides["output_dir"]) != str(out_dir):
        raise ValueError(f"output_dir {overrides['output_dir']!r} differs from the run directory {str(out_dir)!r}")
    for key, value in required.items():
        if key in overrides and overrides[key] != value:
            raise ValueError(f"{key}={overrides[key]!r} is not allowed here: this run needs {key}={value!r}")
    merged = {**device_defaults(config_cls), "report_to": "none", **(defaults or {})}
    if {"gradient_checkpointing", "activation_checkpointing"} & set(overrides):
        merged.pop("gradient_checkpointing", None)
        merged.pop("activation_checkpointing", None)
    merged.update(overrides)
    merged.update(required)
    merged["output_dir"] = str(out_dir)
    return config_cls(**merged)


def comparable_config(cfg: TrainingArguments) -> dict[str, Any]:
    """The config's settings that decide what a run learns, as JSON values (bookkeeping fields left out)."""
    d = json.loads(cfg.to_json_string())
    return {k: v for k, v in d.items() if not _BOOKKEEPING_KEYS.match(k)}


def model_fingerprint(model: Any) -> str:
    """Cheap fingerprint of a model's architecture and weights.

    Hashes the config and, for every parameter, its name, shape, dtype and first 64 values. LoRA weights are
    left out and names are taken without peft's wrapping, so a base model fingerprints the same before and
    after an adapter is injected into it; a passed-in adapter (a `PeftModel`) adds its own weights.

    Returns:
        16 hex digits.
    """
    h = hashlib.sha256()
    cfg = getattr(model, "config", None)
    if cfg is not None:
        h.update(cfg.to_json_string(use_diff=False).encode())
    is_peft = is_peft_model(model)
    for name, p in model.named_parameters():
        if "lora_" in name and not is_peft:
            continue
        clean = name.replace("base_model.model.", "").replace(".base_layer", "")
        h.update(f"{clean}:{tuple(p.shape)}:{p.dtype}".encode())
        h.update(p.detach().reshape(-1)[:64].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Fingerprint of what decides a tokenizer's output: vocabulary, special tokens, chat template (16 hex)."""
    payload = {
        "vocab": sorted(tokenizer.get_vocab().items()),
        "special": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
        "template": getattr(tokenizer, "chat_template", None),
        "class": type(tokenizer).__name__,
    }
    return settings_hash(payload, 16)


def run_config(
    kind: str, cfg: Any, model: Any, tokenizer: Any, lora: Any, records: Sequence[Any], **extra: Any
) -> dict[str, Any]:
    """The settings and fingerprints that identify a run (written to its ``config.json``)."""
    return {
        "kind": kind,
        "trainer": comparable_config(cfg),
        "lora": lora.as_dict() if lora is not None else None,
        "model_fingerprint": model_fingerprint(model),
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        "data_fingerprint": fingerprint(list(records)),
        **extra,
    }


@dataclass
class DataCounts:
    """How many records a run trained on and how many were truncated or dropped.

    Attributes:
        n: Records passed in.
        n_used: Records trained on.
        n_truncated: Records trained on with some tokens cut by `max_length`.
        n_dropped: Records left out because nothing they would train on fits in `max_length`.
        truncated_ids: Ids of truncated records (first 50).
        dropped_ids: Ids of dropped records (first 50).
    """

    n: int = 0
    n_used: int = 0
    n_truncated: int = 0
    n_dropped: int = 0
    truncated_ids: list[str] = field(default_factory=list)
    dropped_ids: list[str] = field(default_factory=list)

    def add(self, record_id: str, truncated: bool, dropped: bool) -> None:
        self.n += 1
        if dropped:
            self.n_dropped += 1
            if len(self.dropped_ids) < 50:
                self.dropped_ids.append(record_id)
            return
        self.n_used += 1
        if truncated:
            self.n_truncated += 1
            if len(self.truncated_ids) < 50:
                self.truncated_ids.append(record_id)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def warn(self, what: str) -> None:
        """Log the truncated and dropped counts, when there are any."""
        if self.n_truncated or self.n_dropped:
            log.warning(
                "%s: %d of %d truncated to max_length, %d dropped (nothing to train on within max_length); "
                "ids are in the run's config.json",
                what,
                self.n_truncated,
                self.n,
                self.n_dropped,
            )


@dataclass
class TrainResult:
    """Outcome of a fine-tuning run.

    Attributes:
        out_dir: The run directory.
        adapter_dir: The trained adapter (with the tokenizer), loadable with `gradsift.model.lora.load_adapter`.
        global_step: Optimizer steps taken in the whole run.
        train_loss: Mean training loss over the steps this call ran (None when a finished run was reused).
        resumed_from: Checkpoint this call resumed from, if any.
        reused: True when the run was already finished with the same settings and nothing was trained.
        counts: Truncated and dropped records.
        model: The trained peft model (on reuse: the saved adapter loaded onto the given model).
    """

    out_dir: Path
    adapter_dir: Path
    global_step: int
    train_loss: float | None
    resumed_from: str | None
    reused: bool
    counts: DataCounts
    model: Any = field(default=None, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "adapter_dir": str(self.adapter_dir.relative_to(self.out_dir)),
            "global_step": self.global_step,
            "train_loss": self.train_loss,
            "resumed_from": self.resumed_from,
            "counts": self.counts.as_dict(),
        }


class RunState(Enum):
    """Where a run directory stands."""

    FRESH = "fresh"
    RESUME = "resume"
    DONE = "done"


def complete_checkpoint(out_dir: Path) -> Path | None:
    """The latest TRL checkpoint that was fully written (its ``trainer_state.json``, written last, exists)."""
    found = []
    for p in out_dir.iterdir() if out_dir.exists() else []:
        m = _CHECKPOINT_RE.match(p.name)
        if m and p.is_dir() and (p / "trainer_state.json").exists():
            found.append((int(m.group(1)), p))
    return max(found)[1] if found else None


def remove_checkpoints(out_dir: Path) -> None:
    """Delete TRL's resume checkpoints (they hold pickled optimizer state and are not results)."""
    for p in out_dir.iterdir():
        if _CHECKPOINT_RE.match(p.name) and p.is_dir():
            shutil.rmtree(p)


def _clear_run(out_dir: Path, owned: tuple[str, ...]) -> None:
    for p in out_dir.iterdir():
        if _CHECKPOINT_RE.match(p.name) or any(p.match(pattern) for pattern in owned):
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def prepare_run_dir(
    out_dir: Path,
    run_config: dict[str, Any],
    done_file: str,
    owned: tuple[str, ...],
    resume: bool,
    overwrite: bool,
) -> tuple[RunState, Path | None]:
    """Check `out_dir` against `run_config` and decide whether to start, resume or reuse.

    A directory with the same settings and `done_file` is reused; with the same settings but unfinished it is
    resumed from its last complete checkpoint (`resume`) or started over. Different settings are refused
    unless `overwrite`, which deletes the previous run's files (only those: `owned` patterns and checkpoints).

    Args:
        out_dir: The run directory (created if missing).
        run_config: JSON-serialisable settings and fingerprints of this run.
        done_file: File whose presence marks a finished run.
        owned: Glob patterns of the files and folders a run of this kind writes.
        resume: Resume an unfinished run with the same settings.
        overwrite: Replace a run with different settings, or a finished one.

    Returns:
        The state and, for `RunState.RESUME`, the checkpoint to resume from.

    Raises:
        ValueError: The directory holds a run with other settings, or files that are not a gradsift run.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = out_dir / CONFIG_FILE
    new = json.loads(json.dumps(run_config))
    if cfg_path.exists():
        try:
            old = json.loads(cfg_path.read_text())
        except (OSError, ValueError) as e:
            if not overwrite:
                raise ValueError(
                    f"{cfg_path} cannot be read ({e}); pass --overwrite (overwrite=True) to replace the run in "
                    f"{out_dir}, or choose another directory"
                ) from None
            old = None
        if old != new:
            if not overwrite:
                check_same_settings(str(out_dir), old, new, what="a run", elsewhere="choose another directory")
            _clear_run(out_dir, owned)
        elif (out_dir / done_file).exists() and not overwrite:
            return RunState.DONE, None
        else:
            ckpt = complete_checkpoint(out_dir)
            if resume and not overwrite and ckpt is not None:
                _truncate_log(out_dir / LOG_FILE, _checkpoint_step(ckpt))
                return RunState.RESUME, ckpt
            _clear_run(out_dir, owned)
    elif any(p.name != LOCK_FILE for p in out_dir.iterdir()):
        raise ValueError(f"{out_dir} is not empty and holds no gradsift run ({CONFIG_FILE} missing); use an empty dir")
    write_json_atomic(cfg_path, new)
    return RunState.FRESH, None


def _checkpoint_step(ckpt: Path) -> int:
    return int(json.loads((ckpt / "trainer_state.json").read_text())["global_step"])


def _truncate_log(path: Path, step: int) -> None:
    """Keep the log lines up to `step`: later ones came from steps the resumed run will redo."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by the kill
        if rec.get("step", 0) <= step:
            kept.append(json.dumps(rec))
    write_text_atomic(path, "".join(k + "\n" for k in kept))


def read_log(out_dir: str | Path) -> list[dict[str, Any]]:
    """The records of a run's ``train_log.jsonl``."""
    path = Path(out_dir) / LOG_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class JsonlLogCallback(TrainerCallback):
    """Appends each training log to ``train_log.jsonl``.

    Each line: ``step``, ``loss`` (mean over the steps since the last line), ``lr`` (the rate the optimizer
    used at this step), ``epoch`` (fractional), ``time`` (Unix seconds), then the trainer's other metrics
    (e.g. DPO's ``rewards/margins``).
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if not logs or "loss" not in logs or not state.is_world_process_zero:
            return
        rec: dict[str, Any] = {
            "step": state.global_step,
            "loss": logs["loss"],
            "lr": logs.get("learning_rate"),
            "epoch": state.epoch,
            "time": time.time(),
        }
        rec.update({k: v for k, v in logs.items() if k not in ("loss", "learning_rate", "epoch")})
        with self.path.open("a") as f:
            f.write(json.dumps(rec) + "\n")


def run_trainer(trainer: Any, out_dir: Path, resume_from: Path | None) -> Any:
    """Train with the run's log callback, resuming from `resume_from` when given.

    Returns:
        The trainer's `TrainOutput`; the model is left in eval mode.
    """
    trainer.add_callback(JsonlLogCallback(out_dir / LOG_FILE))
    output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    trainer.model.eval()
    return output


def finish_run(
    trainer: Any, tokenizer: Any, out_dir: Path, output: Any, resume_from: Path | None, counts: DataCounts
) -> TrainResult:
    """Save the adapter and tokenizer to ``out_dir/adapter``, write ``result.json`` (the run is then done)
    and delete the resume checkpoints.

    Args:
        trainer: The trainer after `run_trainer`.
        tokenizer: Saved beside the adapter.
        out_dir: The run directory.
        output: What `run_trainer` returned.
        resume_from: The checkpoint the run resumed from, if any.
        counts: Data counts to record.

    Returns:
        The result, as also written to ``result.json``.
    """
    adapter_dir = out_dir / ADAPTER_DIR
    trainer.model.save_pretrained(adapter_dir)
    tokenizer.save_pretrained(adapter_dir)
    result = TrainResult(
        out_dir=out_dir,
        adapter_dir=adapter_dir,
        global_step=trainer.state.global_step,
        train_loss=float(output.training_loss),
        resumed_from=str(resume_from) if resume_from else None,
        reused=False,
        counts=counts,
        model=trainer.model,
    )
    write_json_atomic(out_dir / RESULT_FILE, result.as_dict())
    remove_checkpoints(out_dir)
    return result


def reuse_result(out_dir: Path, model: Any) -> TrainResult:
    """Read a finished run's result and load its adapter onto `model` (in place, as training would have)."""
    d = json.loads((out_dir / RESULT_FILE).read_text())
    adapter_dir = out_dir / d["adapter_dir"]
    if is_peft_model(model):
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(model, load_file(adapter_dir / "adapter_model.safetensors"))
        model.eval()
    else:
        model = load_adapter(model, adapter_dir, trainable=False)
    return TrainResult(
        out_dir=out_dir,
        adapter_dir=adapter_dir,
        global_step=d["global_step"],
        train_loss=None,
        resumed_from=None,
        reused=True,
        counts=DataCounts(**d["counts"]),
        model=model,
    )


@dataclass
class RunPlan:
    """A run as decided before anything trains: its directory, TRL config, dataset and LoRA.

    Attributes:
        out_dir: The run directory.
        config: The TRL config (`SFTConfig`, `DPOConfig`), its ``output_dir`` being `out_dir`.
        dataset: What the trainer trains on.
        counts: The records the dataset holds, truncated or left out.
        lora: The LoRA settings to add to the model; None trains the adapter the model already has.
    """

    out_dir: Path
    config: Any
    dataset: Any = field(repr=False)
    counts: DataCounts
    lora: LoraSettings | None

    def identity(self, kind: str, model: Any, tokenizer: Any, records: Sequence[Any], **extra: Any) -> dict[str, Any]:
        """The run's ``config.json`` (`run_config` of this plan, with the data counts last)."""
        return run_config(kind, self.config, model, tokenizer, self.lora, records, **extra, data=self.counts.as_dict())


def execute_run(
    plan: RunPlan,
    identity: dict[str, Any],
    make_trainer: Callable[[], Any],
    finish: Callable[[Any, Any, Path | None], R],
    reuse: Callable[[], R],
    *,
    what: str,
    done_file: str,
    owned: tuple[str, ...],
    resume: bool,
    overwrite: bool,
) -> R:
    """Train, resume or reuse the run of `plan`: the life every run directory goes through.

    The directory is locked for the run (`gradsift.rundir.locked_dir`: a second run into it fails at once) and
    checked against `identity` (`prepare_run_dir`). A finished run returns `reuse()`.
    Otherwise the data counts are logged, the trainer is built and trained (from the last complete checkpoint
    when resuming) with the run's ``train_log.jsonl``, and `finish` writes the run's results.

    Args:
        plan: The run.
        identity: Settings and fingerprints that identify it (its ``config.json``).
        make_trainer: Builds the trainer (only when there is something to train).
        finish: ``finish(trainer, train_output, resumed_from)`` after training; what it returns is returned.
        reuse: The result of the finished run found in the directory.
        what: What the data is, for the truncation warning (e.g. ``"SFT data"``).
        done_file: The file whose presence marks a finished run (`finish` writes it).
        owned: Glob patterns of the files a run of this kind writes (see `prepare_run_dir`).
        resume: Resume an unfinished run with the same settings.
        overwrite: Replace a run with different settings, or redo a finished one.

    Returns:
        What `finish` or `reuse` returned.

    Raises:
        ValueError: The directory holds a run with other settings (without `overwrite`) or is not a run.
        RunDirBusy: Another process runs in the directory.
    """
    with locked_dir(plan.out_dir):
        state, ckpt = prepare_run_dir(plan.out_dir, identity, done_file, owned, resume, overwrite)
        if state is RunState.DONE:
            return reuse()
        plan.counts.warn(f"{what} for {plan.out_dir}")
        trainer = make_trainer()
        output = run_trainer(trainer, plan.out_dir, ckpt)
        return finish(trainer, output, ckpt)


def train_adapter(
    plan: RunPlan,
    identity: dict[str, Any],
    make_trainer: Callable[[], Any],
    model: Any,
    tokenizer: Any,
    *,
    what: str,
    resume: bool,
    overwrite: bool,
) -> TrainResult:
    """`execute_run` for an SFT or DPO run: it ends with ``adapter/`` and ``result.json``.

    Args:
        plan: The run.
        identity: Its settings and fingerprints.
        make_trainer: Builds the trainer of `model`.
        model: The model trained; a finished run's adapter is loaded onto it instead.
        tokenizer: Saved beside the adapter.
        what: What the data is, for the truncation warning.
        resume: Resume an unfinished run with the same settings.
        overwrite: Replace a run with different settings, or retrain a finished one.

    Returns:
        The result; ``result.model`` is the model with the trained adapter.
    """
    return execute_run(
        plan,
        identity,
        make_trainer,
        finish=lambda trainer, output, ckpt: finish_run(trainer, tokenizer, plan.out_dir, output, ckpt, plan.counts),
        reuse=lambda: reuse_result(plan.out_dir, model),
        what=what,
        done_file=RESULT_FILE,
        owned=RUN_OWNED,
        resume=resume,
        overwrite=overwrite,
    )
