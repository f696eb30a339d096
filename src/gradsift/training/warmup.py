"""LESS warm-up (methods.md section 1): LoRA training on a small random part of the pool, saving every epoch.

Each epoch ``k`` leaves ``epoch-k/`` in the run directory with

- the adapter (``adapter_config.json``, ``adapter_model.safetensors``),
- ``optimizer.safetensors``: AdamW's ``exp_avg`` and ``exp_avg_sq``, each flattened to one float32 vector [P]
  over the trainable (LoRA) parameters in the order of ``model.named_parameters()``,
- ``optimizer.json``: ``betas``, ``eps``, ``step``, ``weight_decay`` and the name, shape and offset of every
  parameter in those vectors,
- ``checkpoint.json``: the epoch, the global step and the epoch's mean learning rate (LESS weights each
  checkpoint's scores by it).

``warmup.json`` lists the checkpoints, their learning rates, the sampled example ids and the settings. A
rerun with the same settings, pool and model reuses it; different ones are refused unless `overwrite`.
No pickles: the feature stage reads these files with safetensors and JSON only
(`gradsift.gradients.precondition.load_checkpoint_optimizer`).
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from transformers import TrainerCallback

from gradsift.atomic import write_json_atomic
from gradsift.data.records import Example
from gradsift.data.tokenize import Truncation
from gradsift.model.lora import OPTIMIZER_JSON, OPTIMIZER_TENSORS, LoraSettings, lora_to_add
from gradsift.training.common import (
    CONFIG_FILE,
    LOG_FILE,
    RunPlan,
    execute_run,
    make_config,
    remove_checkpoints,
)
from gradsift.training.sft import make_sft_trainer, sft_dataset

MANIFEST = "warmup.json"
CHECKPOINT_JSON = "checkpoint.json"
_OWNED = (CONFIG_FILE, LOG_FILE, MANIFEST, "epoch-*", ".epoch-*", "README.md")


@dataclass
class WarmupSettings:
    """LESS warm-up settings (methods.md section 1).

    Attributes:
        fraction: Share of the pool trained on, drawn at random (LESS: 0.05).
        epochs: Training epochs; one checkpoint is saved per epoch (LESS: 4).
        seed: Seed of the random draw.
        min_examples: Draw at least this many examples (a small pool's 5% can be a handful).
        truncation: gradsift's truncation policy for examples longer than the trainer's ``max_length``.
    """

    fraction: float = 0.05
    epochs: int = 4
    seed: int = 0
    min_examples: int = 1
    truncation: Truncation = "right"

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1:
            raise ValueError(f"warm-up fraction must be in (0, 1], got {self.fraction}")
        if self.epochs < 1:
            raise ValueError(f"warm-up epochs must be at least 1, got {self.epochs}")
        if self.min_examples < 1:
            raise ValueError(f"warm-up min_examples must be at least 1, got {self.min_examples}")
        if self.truncation not in ("right", "left"):
            raise ValueError(f"truncation must be 'right' or 'left', got {self.truncation!r}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class WarmupCheckpoint:
    """One per-epoch warm-up checkpoint.

    Attributes:
        epoch: 1-based epoch.
        path: Folder with the adapter and optimizer state.
        lr: Mean learning rate over the epoch's optimizer steps.
        step: Global step at the end of the epoch.
    """

    epoch: int
    path: Path
    lr: float
    step: int


@dataclass
class WarmupResult:
    """A finished warm-up.

    Attributes:
        out_dir: The run directory.
        checkpoints: One per epoch, in order.
        example_ids: Ids of the sampled examples, in pool order.
        reused: True when an existing warm-up with the same settings was returned without training.
        model: The peft model after the last epoch (None when reused: load a checkpoint's adapter instead).
    """

    out_dir: Path
    checkpoints: list[WarmupCheckpoint]
    example_ids: list[str]
    reused: bool = False
    model: Any = field(default=None, repr=False)

    @property
    def lrs(self) -> list[float]:
        """Each checkpoint's mean learning rate (LESS's checkpoint weights)."""
        return [c.lr for c in self.checkpoints]


def sample_pool(pool: Sequence[Example], settings: WarmupSettings) -> list[Example]:
    """The seeded random share of the pool the warm-up trains on, in pool order.

    Returns:
        ``max(min_examples, round(fraction * len(pool)))`` examples (at most the whole pool).
    """
    if not pool:
        raise ValueError("the warm-up pool is empty")
    k = min(len(pool), max(settings.min_examples, round(settings.fraction * len(pool))))
    picked = sorted(random.Random(settings.seed).sample(range(len(pool)), k))
    return [pool[i] for i in picked]


def _trainable(model: Any) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def save_optimizer_state(model: Any, optimizer: Any, path: Path) -> None:
    """Write AdamW's moments for the trainable parameters as flat float32 vectors (see the module docstring).

    Args:
        model: The model being trained; its trainable parameters, in `named_parameters` order, fix the layout.
        optimizer: Its torch AdamW optimizer (or a wrapper of one, such as accelerate's).
        path: Destination folder (must exist).

    Raises:
        ValueError: The optimizer holds no Adam moments for a trainable parameter (not an Adam optimizer, or
            no step taken yet).
    """
    state = optimizer.state
    params = _trainable(model)
    m, v, layout, offset = [], [], [], 0
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    for name, p in params:
        s = state.get(p, {})
        if "exp_avg" not in s or "exp_avg_sq" not in s:
            raise ValueError(
                f"the optimizer has no Adam moments for {name}: the warm-up needs an AdamW optimizer (optim='adamw_*')"
            )
        m.append(s["exp_avg"].detach().float().reshape(-1).cpu())
        v.append(s["exp_avg_sq"].detach().float().reshape(-1).cpu())
        layout.append({"name": name, "shape": list(p.shape), "offset": offset})
        offset += p.numel()
    group = group_of[id(params[0][1])]
    step = state[params[0][1]]["step"]
    save_file({"exp_avg": torch.cat(m), "exp_avg_sq": torch.cat(v)}, str(path / OPTIMIZER_TENSORS))
    write_json_atomic(
        path / OPTIMIZER_JSON,
        {
            "betas": [float(b) for b in group["betas"]],
            "eps": float(group["eps"]),
            "weight_decay": float(group.get("weight_decay", 0.0)),
            "step": int(step.item() if torch.is_tensor(step) else step),
            "n_params": offset,
            "params": layout,
        },
    )


class EpochCheckpointCallback(TrainerCallback):
    """Saves the adapter, the Adam state and the epoch's mean learning rate at the end of every epoch.

    The learning rate of a step is read right after the optimizer stepped, before the scheduler moves it,
    so it is the rate that step used. Resuming restarts at an epoch boundary (the trainer checkpoints once
    per epoch), so an epoch's list of rates is always complete.
    """

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.lrs: list[float] = []

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.lrs = []

    def on_optimizer_step(self, args: Any, state: Any, control: Any, optimizer: Any = None, **kwargs: Any) -> None:
        self.lrs.append(float(optimizer.param_groups[0]["lr"]))

    def on_epoch_end(
        self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None, **kwargs: Any
    ) -> None:
        if not state.is_world_process_zero:
            return
        epoch = round(state.epoch)
        final = self.out_dir / f"epoch-{epoch}"
        tmp = self.out_dir / f".epoch-{epoch}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        save_optimizer_state(model, optimizer, tmp)
        write_json_atomic(
            tmp / CHECKPOINT_JSON,
            {"epoch": epoch, "step": state.global_step, "lr": sum(self.lrs) / len(self.lrs), "n_steps": len(self.lrs)},
        )
        # Replace as a whole so a kill never leaves a half-written epoch folder under its final name.
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)


def _read_checkpoints(out_dir: Path, epochs: int) -> list[WarmupCheckpoint]:
    out = []
    for k in range(1, epochs + 1):
        d = out_dir / f"epoch-{k}"
        if not (d / CHECKPOINT_JSON).exists():
            raise RuntimeError(f"{d}: the warm-up finished without saving epoch {k}")
        c = json.loads((d / CHECKPOINT_JSON).read_text())
        out.append(WarmupCheckpoint(epoch=k, path=d, lr=float(c["lr"]), step=int(c["step"])))
    return out


def load_warmup(out_dir: str | Path) -> WarmupResult:
    """Read a finished warm-up from its ``warmup.json``.

    Raises:
        FileNotFoundError: No manifest in `out_dir`.
    """
    out_dir = Path(out_dir)
    if not (out_dir / MANIFEST).exists():
        raise FileNotFoundError(f"{out_dir}: no {MANIFEST}, not a finished warm-up")
    d = json.loads((out_dir / MANIFEST).read_text())
    checkpoints = [
        WarmupCheckpoint(epoch=c["epoch"], path=out_dir / c["path"], lr=c["lr"], step=c["step"])
        for c in d["checkpoints"]
    ]
    return WarmupResult(out_dir=out_dir, checkpoints=checkpoints, example_ids=d["example_ids"], reused=True)


def run_warmup(
    model: Any,
    tokenizer: Any,
    pool: Sequence[Example],
    out_dir: str | Path,
    settings: WarmupSettings | None = None,
    lora: LoraSettings | None = None,
    config: Any = None,
    *,
    resume: bool = True,
    overwrite: bool = False,
    callbacks: list[Any] | None = None,
) -> WarmupResult:
    """LESS warm-up: LoRA training on a seeded random share of `pool`, one checkpoint per epoch.

    Args:
        model: The base causal LM (an adapter is added to it in place).
        tokenizer: Its tokenizer.
        pool: The candidate pool `D`.
        out_dir: Run directory (see the module docstring for its files).
        settings: Share, epochs and seed; default `WarmupSettings()` (LESS: 5%, 4 epochs).
        lora: LoRA settings; default `LoraSettings()`.
        config: `trl.SFTConfig` overrides (dict or object, as in `gradsift.training.sft.train_sft`). The warm-up sets
            ``num_train_epochs`` from `settings` and saves once per epoch; overrides that contradict this are
            refused. The optimizer must be an AdamW variant (LESS preconditions with its moments).
        resume: Resume an unfinished warm-up with the same settings.
        overwrite: Replace a warm-up with different settings, or redo a finished one.
        callbacks: Extra `transformers.TrainerCallback`s.

    Returns:
        The checkpoints with their learning rates and the sampled ids.

    Raises:
        ValueError: Different settings in `out_dir` without `overwrite`, a non-Adam optimizer, bad settings.
    """
    from trl import SFTConfig

    out_dir = Path(out_dir)
    settings = settings or WarmupSettings()
    lora = lora_to_add(model, lora)
    required = {"num_train_epochs": settings.epochs, "max_steps": -1, "save_strategy": "epoch"}
    cfg = make_config(SFTConfig, config, out_dir, required=required)
    if "adam" not in str(getattr(cfg.optim, "value", cfg.optim)).lower():
        raise ValueError(f"the warm-up needs an AdamW optimizer for LESS's Adam features, got optim={cfg.optim}")
    sample = sample_pool(pool, settings)
    dataset, counts = sft_dataset(tokenizer, sample, cfg.max_length, settings.truncation)
    plan = RunPlan(out_dir, cfg, dataset, counts, lora)
    # The identity covers the whole pool: the sample is drawn from it by the settings.
    rc = plan.identity("warmup", model, tokenizer, pool, warmup=settings.as_dict())

    def make_trainer() -> Any:
        trainer = make_sft_trainer(model, tokenizer, cfg, dataset, lora, [EpochCheckpointCallback(out_dir)])
        for cb in callbacks or []:
            trainer.add_callback(cb)
        return trainer

    def finish(trainer: Any, output: Any, resumed_from: Path | None) -> WarmupResult:
        checkpoints = _read_checkpoints(out_dir, settings.epochs)
        ids = [ex.id for ex in sample]
        write_json_atomic(
            out_dir / MANIFEST,
            {
                "settings": settings.as_dict(),
                "lora": rc["lora"],
                "data_fingerprint": rc["data_fingerprint"],
                "model_fingerprint": rc["model_fingerprint"],
                "n_pool": len(pool),
                "example_ids": ids,
                "counts": counts.as_dict(),
                "checkpoints": [
                    {"epoch": c.epoch, "path": c.path.name, "lr": c.lr, "step": c.step} for c in checkpoints
                ],
                "lrs": [c.lr for c in checkpoints],
            },
        )
        remove_checkpoints(out_dir)
        return WarmupResult(out_dir=out_dir, checkpoints=checkpoints, example_ids=ids, model=trainer.model)

    return execute_run(
        plan,
        rc,
        make_trainer,
        finish,
        lambda: load_warmup(out_dir),
        what="warm-up data",
        done_file=MANIFEST,
        owned=_OWNED,
        resume=resume,
        overwrite=overwrite,
    )
