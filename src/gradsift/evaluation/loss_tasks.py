"""Loss tasks: ``target_loss`` and ``utility`` (token loss of reference answers) and ``preference`` (DPO margins).

The likelihood of reference text under the model, in length-bucketed batches
(`gradsift.evaluation.tasks.forward_in_batches`); the losses are those of `gradsift.model.task`
(`SFTTask`, `DPOTask`), so an evaluation measures what training optimises.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gradsift.atomic import write_npy_atomic
from gradsift.data.records import Example, Pair
from gradsift.data.tokenize import IGNORE, EncodeStats, encode_examples, encode_pairs
from gradsift.evaluation.generate import GenerationSettings, eval_mode, generate
from gradsift.evaluation.tasks import (
    ScoringSettings,
    TaskKind,
    forward_in_batches,
    last_user,
    pad_id,
    prompt_messages,
    require,
    share,
    task_result,
)
from gradsift.model.task import SFTTask, adapter_disabled, pair_logps


def normalise_text(text: str) -> str:
    """Lower case, no punctuation or articles, single spaces (SQuAD's answer normalisation)."""
    text = text.casefold()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _example_losses(
    model: Any, tokenizer: Any, examples: Sequence[Example], settings: ScoringSettings
) -> tuple[list[float], list[int], EncodeStats]:
    """Token-mean loss of each example's assistant turns (SFTTask, reduction mean) and its token count.

    Raises:
        ValueError: An example has no loss token (an empty response).
    """
    encoded, stats = encode_examples(tokenizer, examples, settings.max_length, settings.truncation)
    task = SFTTask(reduction="mean")

    def loss_and_count(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        # the first position never predicts, as in `token_logps`
        n = (batch["labels"][:, 1:] != IGNORE).sum(-1)
        return torch.stack([task.losses(model, batch).float(), n.float()], -1)

    budget = settings.batch_size * settings.max_length
    rows = forward_in_batches(model, tokenizer, [[e] for e in encoded], loss_and_count, budget, settings.batch_size)
    losses = [float(r[0]) for r in rows]
    counts = [int(r[1]) for r in rows]
    empty = [ex.id for ex, c in zip(examples, counts, strict=True) if c == 0]
    if empty:
        raise ValueError(f"examples with no response token to score (empty response?): {empty[:10]}")
    return losses, counts, stats


def _loss_metrics(losses: list[float], counts: list[int]) -> dict[str, float]:
    return {
        "mean_loss": sum(losses) / len(losses),
        "token_mean_loss": sum(x * c for x, c in zip(losses, counts, strict=True)) / sum(counts),
    }


def evaluate_target_loss(
    model: Any, tokenizer: Any, examples: Sequence[Example], settings: ScoringSettings | None = None
) -> dict[str, Any]:
    """Mean token loss of the gold answers of the target examples (lower is better).

    Args:
        model: Causal LM.
        tokenizer: Its tokenizer.
        examples: Target examples; the loss covers their assistant turns (`gradsift.data.tokenize`).
        settings: Length limit and batch size.

    Returns:
        Result dict; metrics ``mean_loss`` (mean over examples of each one's token-mean loss),
        ``token_mean_loss`` (total loss over total tokens) and ``n_truncated``.

    Raises:
        ValueError: An example has no loss token left (e.g. an empty response).
    """
    require(examples, "target examples")
    settings = settings or ScoringSettings()
    losses, counts, stats = _example_losses(model, tokenizer, examples, settings)
    rows = [
        {"id": ex.id, "prompt": last_user(prompt_messages(ex)), "reference": ex.response, "loss": x, "n_tokens": c}
        for ex, x, c in zip(examples, losses, counts, strict=True)
    ]
    metrics = {**_loss_metrics(losses, counts), "n_truncated": stats.n_truncated}
    return task_result(TaskKind.TARGET_LOSS, metrics, rows)


def evaluate_utility(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    settings: ScoringSettings | None = None,
    generation: GenerationSettings | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Utility retention on a general task: token loss on the reference answers, optionally exact match.

    Args:
        model: Causal LM.
        tokenizer: Its tokenizer.
        examples: General-task records with reference answers.
        settings: Length limit and batch size for the loss.
        generation: When given, also generate greedily and report exact match after :func:`normalise_text`.
        progress: Show a progress bar during generation.

    Returns:
        Result dict; metrics ``mean_loss``, ``token_mean_loss``, ``n_truncated`` and, with `generation`,
        ``exact_match``.
    """
    require(examples, "utility examples")
    settings = settings or ScoringSettings()
    losses, counts, stats = _example_losses(model, tokenizer, examples, settings)
    rows: list[dict[str, Any]] = [
        {"id": ex.id, "prompt": last_user(prompt_messages(ex)), "reference": ex.response, "loss": x, "n_tokens": c}
        for ex, x, c in zip(examples, losses, counts, strict=True)
    ]
    metrics: dict[str, Any] = {**_loss_metrics(losses, counts), "n_truncated": stats.n_truncated}
    if generation is not None:
        outputs = generate(model, tokenizer, [prompt_messages(ex) for ex in examples], generation, progress)
        for row, out in zip(rows, outputs, strict=True):
            row["output"] = out
            row["correct"] = normalise_text(out) == normalise_text(row["reference"])
        metrics["exact_match"] = share(rows, "correct")
    return task_result(TaskKind.UTILITY, metrics, rows)


def evaluate_preference(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[Pair],
    beta: float = 0.1,
    settings: ScoringSettings | None = None,
    reference_model: Any = None,
    reference_cache: str | Path | None = None,
) -> dict[str, Any]:
    """Preference accuracy and mean implicit reward margin on held-out pairs (`DPOTask`).

    ``margin = (log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x))`` with summed token
    log-probabilities; the implicit reward margin is ``beta * margin``; accuracy is the share of pairs with
    ``margin > 0``.

    Args:
        model: The trained policy. Without `reference_model` it must be a peft model: the reference is the
            same model with its adapter disabled.
        tokenizer: Its tokenizer.
        pairs: Held-out preference pairs.
        beta: DPO temperature.
        settings: Length limit and batch size (pairs per forward pass).
        reference_model: Optional separate reference model (e.g. after full fine-tuning).
        reference_cache: A ``.npy`` file for the reference log-probabilities [N, 2] (chosen, rejected): read
            when it exists, else computed and written. The reference is the same for every adapter trained on
            one base model, so a grid of adapters pays its forward passes once. The caller keys the file by
            everything that decides it (base model, pairs, settings); a file of another shape is refused.

    Returns:
        Result dict; metrics ``accuracy``, ``mean_reward_margin`` (with beta), ``mean_margin`` (without) and
        ``n_truncated``.

    Raises:
        ValueError: No reference: the model has no adapter to disable and no `reference_model` was given; a
            `reference_cache` of another shape.
    """
    require(pairs, "preference pairs")
    if reference_model is None and not hasattr(model, "disable_adapter"):
        raise ValueError(
            "preference evaluation needs a reference: pass a peft model (reference = adapter disabled) "
            "or reference_model=..."
        )
    if not beta > 0:
        raise ValueError(f"beta must be positive, got {beta}")
    settings = settings or ScoringSettings()
    encoded, stats = encode_pairs(tokenizer, pairs, settings.max_length, settings.truncation)
    budget = settings.batch_size * settings.max_length

    def logps(m: Any) -> np.ndarray:
        """Summed log-probabilities [N, 2] of each pair's chosen and rejected response under `m`."""
        # pair_logps counts both rows of a pair against its budget: twice the budget batches as before
        with eval_mode(m):
            return pair_logps(m, encoded, pad_id(tokenizer), 2 * budget, settings.batch_size, desc="preference")

    ref: np.ndarray | None = None
    cache = Path(reference_cache) if reference_cache is not None else None
    if cache is not None and cache.exists():
        ref = np.load(cache, allow_pickle=False)
        if ref.shape != (len(pairs), 2):
            raise ValueError(f"{cache}: reference log-probabilities of shape {ref.shape}, not ({len(pairs)}, 2)")
    if ref is None:
        if reference_model is not None:
            ref = logps(reference_model)
        else:
            with adapter_disabled(model):
                ref = logps(model)
        if cache is not None:
            write_npy_atomic(cache, ref)
    pol = logps(model)
    margins = [float(m) for m in (pol[:, 0] - ref[:, 0]) - (pol[:, 1] - ref[:, 1])]
    rows = [
        {
            "id": p.id,
            "prompt": last_user(p.prompt),
            "chosen": p.chosen,
            "rejected": p.rejected,
            "margin": m,
            "reward_margin": beta * m,
            "correct": m > 0,
        }
        for p, m in zip(pairs, margins, strict=True)
    ]
    metrics = {
        "accuracy": share(rows, "correct"),
        "mean_reward_margin": beta * sum(margins) / len(margins),
        "mean_margin": sum(margins) / len(margins),
        "beta": beta,
        "n_truncated": stats.n_truncated,
    }
    return task_result(TaskKind.PREFERENCE, metrics, rows)
