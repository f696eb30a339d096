"""Multiple choice (MMLU/ARC style): accuracy of the option with the highest log-likelihood.

Each option is scored as the assistant's answer to the question, in length-bucketed batches
(`gradsift.evaluation.tasks.forward_in_batches`); the items are `gradsift.data.records.MCItem`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch

from gradsift.data.records import MCItem
from gradsift.data.tokenize import IGNORE, Encoded
from gradsift.evaluation.generate import encode_prompt
from gradsift.evaluation.tasks import (
    FewShot,
    TaskKind,
    build_prompt,
    forward_in_batches,
    per_task,
    require,
    share,
    task_result,
)
from gradsift.model.task import sequence_logps

MCFormat = Literal["text", "letter"]
Normalisation = Literal["sum", "token", "char"]


def _mc_prompt(item: MCItem, fmt: MCFormat, fewshot: FewShot) -> list[dict[str, str]]:
    question = item.question
    if fmt == "letter":
        options = "\n".join(f"{chr(ord('A') + k)}. {c}" for k, c in enumerate(item.choices))
        question = f"{question}\n{options}\nAnswer:"
    return build_prompt([{"role": "user", "content": question}], fewshot)


def evaluate_multiple_choice(
    model: Any,
    tokenizer: Any,
    items: Sequence[MCItem],
    fmt: MCFormat = "text",
    normalisation: Normalisation = "token",
    fewshot: FewShot = None,
    batch_size: int = 8,
) -> dict[str, Any]:
    """Accuracy of picking the option with the highest log-likelihood.

    Each option is scored as the assistant's answer to the question: ``log p(option tokens | prompt)``.

    Args:
        model: Causal LM.
        tokenizer: Its tokenizer.
        items: Questions.
        fmt: ``"text"`` scores each option's text after the bare question (ARC-style cloze); ``"letter"`` lists
            the lettered options in the prompt and scores the letters (MMLU-style).
        normalisation: ``"token"`` divides the summed log-probability by the option's token count (gradsift's
            default, so long options are not penalised), ``"char"`` by its character count (lm-evaluation-harness's
            ``acc_norm``), ``"sum"`` uses it unnormalised.
        fewshot: Optional few-shot context.
        batch_size: Sequences per forward pass.

    Returns:
        Result dict; metrics ``accuracy`` and ``per_task``; per item the score of each option.
    """
    require(items, "multiple-choice items")
    if fmt not in ("text", "letter"):
        raise ValueError(f"fmt must be 'text' or 'letter', got {fmt!r}")
    if normalisation not in ("sum", "token", "char"):
        raise ValueError(f"normalisation must be 'sum', 'token' or 'char', got {normalisation!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    seqs: list[Encoded] = []
    owners: list[tuple[int, int]] = []
    options: list[str] = []
    for i, item in enumerate(items):
        prompt = encode_prompt(tokenizer, _mc_prompt(item, fmt, fewshot))
        texts = [chr(ord("A") + k) for k in range(len(item.choices))] if fmt == "letter" else item.choices
        for k, text in enumerate(texts):
            cont = list(tokenizer(text, add_special_tokens=False)["input_ids"])
            seqs.append(Encoded(input_ids=prompt + cont, labels=[IGNORE] * len(prompt) + cont))
            owners.append((i, k))
            options.append(text)

    def logp_and_count(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        s, n = sequence_logps(model, batch)
        return torch.stack([s, n.to(s.dtype)], -1)

    budget = batch_size * max(len(seq) for seq in seqs)
    sums = forward_in_batches(model, tokenizer, [[seq] for seq in seqs], logp_and_count, budget, batch_size)
    logps = []
    for (logp, n), text in zip(sums, options, strict=True):
        if normalisation == "token":
            logps.append(float(logp) / float(n))
        elif normalisation == "char":
            logps.append(float(logp) / len(text))
        else:
            logps.append(float(logp))
    scores: list[list[float]] = [[0.0] * len(item.choices) for item in items]
    for (i, k), lp in zip(owners, logps, strict=True):
        scores[i][k] = lp
    rows = []
    for item, sc in zip(items, scores, strict=True):
        choice = max(range(len(sc)), key=lambda k: sc[k])
        rows.append(
            {
                "id": item.id,
                "task": item.task,
                "prompt": item.question,
                "choices": item.choices,
                "scores": sc,
                "choice": choice,
                "reference": item.answer,
                "correct": choice == item.answer,
            }
        )
    metrics = {
        "accuracy": share(rows, "correct"),
        "per_task": per_task(rows, "correct"),
        "format": fmt,
        "normalisation": normalisation,
    }
    return task_result(TaskKind.MULTIPLE_CHOICE, metrics, rows)
