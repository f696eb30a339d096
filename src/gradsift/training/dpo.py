"""LoRA DPO with TRL's `DPOTrainer`: TIF's DPO runs and `theta_val` (methods.md section 3).

The reference model is the base model with the adapter disabled: the base model goes to the trainer with
``peft_config=`` and no ``ref_model``. (Given a model that already carries an adapter and no ``ref_model``,
TRL 1.x would copy that adapter as a frozen "ref" adapter and use it as the reference; gradsift refuses such
models, so the reference always matches `gradsift.model.task.DPOTask`'s adapter-disabled reference.)

Pairs go to TRL as a conversational prompt/chosen/rejected dataset when the tokenizer has a chat template,
else as standard text in gradsift's plain "### User:/### Assistant:" layout. TRL drops pairs whose prompt
alone fills ``max_length`` and cuts the others' completions to fit, without saying so; gradsift counts both
first with TRL's own tokenisation and truncation rules, leaves the dropped pairs out itself, and writes the
counts and ids to the run's ``config.json`` and ``result.json``.

The reference log-probabilities can come from a file (``reference_cache``): the reference is the same base
model for every run of a grid, so each pair's reference pass is done once for all runs instead of at every
step of every run (the reference forward beside the policy's forward and backward: a CPU-size LoRA DPO step
ran 1.36x faster without it, `bench/results/dpo-reference-cpu.md`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradsift.atomic import write_json_atomic
from gradsift.data.records import Pair
from gradsift.data.tokenize import segments
from gradsift.model.lora import LoraSettings, is_peft_model
from gradsift.progress import progress
from gradsift.settings import settings_hash
from gradsift.training.common import DataCounts, RunPlan, TrainResult, make_config, train_adapter

_DEFAULTS = {"num_train_epochs": 1}


def pair_row(tokenizer: Any, pair: Pair) -> dict[str, Any]:
    """One pair in TRL's preference format.

    Returns:
        Conversational ``{"prompt": [turns], "chosen": [assistant turn], "rejected": [assistant turn]}`` with a
        chat template; without one, standard text: the prompt rendered in gradsift's plain layout up to the
        assistant header, and each response ending with the EOS token (TRL would append it anyway).
    """
    if getattr(tokenizer, "chat_template", None):
        return {
            "prompt": pair.prompt,
            "chosen": [{"role": "assistant", "content": pair.chosen}],
            "rejected": [{"role": "assistant", "content": pair.rejected}],
        }
    segs = segments(tokenizer, pair.prompt + [{"role": "assistant", "content": pair.chosen}])
    last_loss = max(i for i, (_, is_loss) in enumerate(segs) if is_loss)
    eos = tokenizer.eos_token or ""
    return {
        "prompt": "".join(text for text, _ in segs[:last_loss]),
        "chosen": pair.chosen + eos,
        "rejected": pair.rejected + eos,
    }


@dataclass
class PairLengths:
    """Token lengths of a pair as TRL splits it: the shared prompt, then each completion."""

    prompt: int
    chosen: int
    rejected: int


def trl_pair_lengths(tokenizer: Any, row: dict[str, Any]) -> PairLengths:
    """Tokenise a row the way TRL 1.x's `DPOTrainer` does and split it where TRL does.

    TRL tokenises the prompt (with the generation prompt) and prompt+response separately and starts the
    completion where the token ids first differ.
    """
    from trl.data_utils import common_prefix_length

    def ids(x: Any, gen: bool = False) -> list[int]:
        if isinstance(x, list):
            out = tokenizer.apply_chat_template(x, tokenize=True, return_dict=True, add_generation_prompt=gen)
        else:
            out = tokenizer(text=x)
        return list(out["input_ids"])

    prompt = ids(row["prompt"], gen=True)
    pc, pr = ids(row["prompt"] + row["chosen"]), ids(row["prompt"] + row["rejected"])
    n = min(common_prefix_length(prompt, pc), common_prefix_length(prompt, pr))
    return PairLengths(prompt=n, chosen=len(pc) - n, rejected=len(pr) - n)


def trl_fate(n: PairLengths, max_length: int | None, truncation_mode: str) -> tuple[bool, bool]:
    """Whether TRL truncates and whether it drops a pair of these lengths.

    ``keep_start`` (TRL's default): a pair whose prompt has ``max_length`` tokens or more is dropped; one whose
    prompt plus longer response exceeds ``max_length`` loses the end of that response. ``keep_end``: nothing is
    dropped, a longer pair loses the start of its prompt.

    Returns:
        ``(truncated, dropped)``.
    """
    if max_length is None:
        return False, False
    dropped = truncation_mode == "keep_start" and n.prompt >= max_length
    return n.prompt + max(n.chosen, n.rejected) > max_length, dropped


def dpo_dataset(
    tokenizer: Any, pairs: Sequence[Pair], max_length: int | None, truncation_mode: str = "keep_start"
) -> tuple[Any, DataCounts]:
    """The TRL preference dataset for `pairs`, without the pairs TRL would drop, and the counts.

    Raises:
        ValueError: No pairs, or every pair would be dropped.
    """
    from datasets import Dataset

    if not pairs:
        raise ValueError("no preference pairs to train on")
    counts = DataCounts()
    kept = []
    for p in pairs:
        row = pair_row(tokenizer, p)
        truncated, dropped = trl_fate(trl_pair_lengths(tokenizer, row), max_length, truncation_mode)
        counts.add(p.id, truncated, dropped)
        if not dropped:
            kept.append(row)
    if not kept:
        raise ValueError(f"every one of the {counts.n} pairs has a prompt of max_length={max_length} tokens or more")
    return Dataset.from_list(kept), counts


def _check_base(model: Any, lora: LoraSettings | None) -> LoraSettings:
    if is_peft_model(model):
        raise ValueError(
            "train_dpo needs the base model: its reference is the base with the adapter disabled. Merge an "
            "existing adapter first (model.merge_and_unload()) and pass the result"
        )
    return lora or LoraSettings()


def make_dpo_trainer(
    model: Any,
    tokenizer: Any,
    cfg: Any,
    dataset: Any,
    lora: LoraSettings,
    callbacks: list[Any] | None,
    reference_cache: str | Path | None = None,
) -> Any:
    """A `DPOTrainer` on the base `model` with a new LoRA adapter and the adapter-disabled base as reference.

    With `reference_cache`, the reference log-probabilities are read from that directory (see
    `attach_reference`) instead of being computed at every step.

    Raises:
        RuntimeError: The trainer holds a separate reference model or a "ref" adapter (a TRL change).
    """
    from trl import DPOTrainer

    trainer = DPOTrainer(
        model=model,
        ref_model=None,
        args=cfg,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora.to_peft(model),
        callbacks=callbacks,
    )
    adapters: Any = getattr(trainer.model, "peft_config", {})
    if trainer.ref_model is not None or "ref" in adapters:
        raise RuntimeError("TRL built a separate DPO reference; gradsift needs the adapter-disabled base model")
    if reference_cache is not None and not cfg.precompute_ref_log_probs:
        attach_reference(trainer, Path(reference_cache))
    return trainer


def _reference_settings(trainer: Any) -> dict[str, Any]:
    """What, besides the base model and a pair's token ids, decides its reference log-probabilities."""
    args = trainer.args
    return {
        "max_length": args.max_length,
        "truncation_mode": args.truncation_mode,
        "ld_alpha": args.ld_alpha,
        "pad_to_multiple_of": args.pad_to_multiple_of,
    }


def attach_reference(trainer: Any, cache_dir: Path) -> int:
    """Give `trainer`'s training pairs their reference log-probabilities from `cache_dir`, computing (with
    TRL's own `compute_ref_log_probs`, adapter disabled) and adding only the pairs it lacks.

    The pairs then carry ``ref_chosen_logps``/``ref_rejected_logps`` columns, the form TRL's
    ``precompute_ref_log_probs`` gives them, and the trainer reads them instead of running the reference.
    The directory must hold one base model's values (the caller names it by the model); entries are keyed by
    the pair's token ids, and the file by the settings that change the values (`_reference_settings`).

    Returns:
        How many pairs were computed (0 when all were cached).
    """
    import torch
    from torch.utils.data import DataLoader

    ds = trainer.train_dataset
    settings = _reference_settings(trainer)
    path = cache_dir / f"reference-{settings_hash(settings, 12)}.json"

    def read() -> dict[str, list[float]]:
        return json.loads(path.read_text())["logps"] if path.exists() else {}

    cached = read()
    keys = [
        settings_hash([r["prompt_ids"], r["chosen_ids"], r["rejected_ids"]], 32)
        for r in ds.select_columns(["prompt_ids", "chosen_ids", "rejected_ids"])
    ]
    first: dict[str, int] = {}
    for i, k in enumerate(keys):
        if k not in cached:
            first.setdefault(k, i)
    missing = list(first.values())
    if missing:
        loader = DataLoader(
            ds.select(missing).select_columns(["prompt_ids", "chosen_ids", "rejected_ids"]),
            batch_size=trainer.args.per_device_train_batch_size,
            collate_fn=trainer.data_collator,
            shuffle=False,
        )
        device = trainer.accelerator.device
        values: list[list[float]] = []
        with progress(len(missing), "DPO reference", unit="pair") as bar:
            for batch in loader:
                moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                chosen, rejected = trainer.compute_ref_log_probs(trainer.model, moved)
                values += [[float(c), float(r)] for c, r in zip(chosen.cpu(), rejected.cpu(), strict=True)]
                bar.update(len(chosen))
        # re-read: another run may have added pairs meanwhile
        cached = {**read(), **cached, **{keys[i]: v for i, v in zip(missing, values, strict=True)}}
        cache_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {"settings": settings, "logps": cached}, indent=0)
    trainer.train_dataset = ds.add_column("ref_chosen_logps", [cached[k][0] for k in keys]).add_column(
        "ref_rejected_logps", [cached[k][1] for k in keys]
    )
    # what TRL's precompute_ref_log_probs sets once the columns are in; the reference forward is then skipped
    trainer.precompute_ref_logps = True
    return len(missing)


def plan_dpo(
    tokenizer: Any, pairs: Sequence[Pair], out_dir: str | Path, lora: LoraSettings, config: Any, beta: float | None
) -> RunPlan:
    """The DPO run `train_dpo` trains (arguments as there; `lora` checked by `_check_base`).

    Raises:
        ValueError: No usable pairs, or bad config overrides.
    """
    from trl import DPOConfig

    out_dir = Path(out_dir)
    cfg = make_config(DPOConfig, config, out_dir, _DEFAULTS, {"beta": beta} if beta is not None else None)
    dataset, counts = dpo_dataset(tokenizer, pairs, cfg.max_length, cfg.truncation_mode)
    return RunPlan(out_dir, cfg, dataset, counts, lora)


def build_dpo_trainer(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[Pair],
    out_dir: str | Path,
    lora: LoraSettings | None = None,
    config: Any = None,
    *,
    beta: float | None = None,
    callbacks: list[Any] | None = None,
    reference_cache: str | Path | None = None,
) -> tuple[Any, DataCounts]:
    """Set up the `DPOTrainer` that `train_dpo` runs, without training (arguments as in `train_dpo`).

    Returns:
        The trainer and the data counts.
    """
    checked = _check_base(model, lora)
    plan = plan_dpo(tokenizer, pairs, out_dir, checked, config, beta)
    trainer = make_dpo_trainer(model, tokenizer, plan.config, plan.dataset, checked, callbacks, reference_cache)
    return trainer, plan.counts


def train_dpo(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[Pair],
    out_dir: str | Path,
    lora: LoraSettings | None = None,
    config: Any = None,
    *,
    beta: float | None = None,
    resume: bool = True,
    overwrite: bool = False,
    callbacks: list[Any] | None = None,
    reference_cache: str | Path | None = None,
) -> TrainResult:
    """Train a LoRA adapter on preference pairs with TRL's `DPOTrainer` (sigmoid loss by default).

    Also computes TIF's `theta_val` (methods.md section 3): one epoch of DPO on the validation pairs.
    Writes the same run directory as `gradsift.training.sft.train_sft` (config, log, adapter, result, resume).

    Args:
        model: The base causal LM (not a peft model); a LoRA adapter is added to it in place.
        tokenizer: Its tokenizer.
        pairs: Preference pairs `(x, y_w, y_l)`.
        out_dir: Run directory.
        lora: LoRA settings; default `LoraSettings()`.
        config: `trl.DPOConfig` overrides as a dict (gradsift's defaults: one epoch, ``report_to="none"``, bf16
            and gradient checkpointing off on CPU) or a `DPOConfig`. ``max_length`` and ``truncation_mode``
            decide the truncated and dropped pairs.
        beta: DPO temperature; None keeps the config's (TRL default 0.1). A config that says otherwise is refused.
        resume: Resume an unfinished run with the same settings from its last checkpoint.
        overwrite: Replace a run with different settings, or retrain a finished one.
        callbacks: Extra `transformers.TrainerCallback`s.
        reference_cache: A directory of this base model's reference log-probabilities, read and extended
            (`attach_reference`); the same values as the per-step reference pass, computed once per pair.

    Returns:
        The result (with the truncated/dropped counts); ``result.model`` is the trained peft model.

    Raises:
        ValueError: A peft model, different settings in `out_dir` without `overwrite`, no usable pairs, or
            bad config overrides.
    """
    checked = _check_base(model, lora)
    plan = plan_dpo(tokenizer, pairs, out_dir, checked, config, beta)
    identity = plan.identity("dpo", model, tokenizer, pairs)
    return train_adapter(
        plan,
        identity,
        lambda: make_dpo_trainer(model, tokenizer, plan.config, plan.dataset, checked, callbacks, reference_cache),
        model,
        tokenizer,
        what="DPO pairs",
        resume=resume,
        overwrite=overwrite,
    )
