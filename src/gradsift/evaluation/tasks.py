"""Task metrics: what a fine-tuned model is scored on after training on a selection.

One function per :class:`TaskKind`, each taking the model, its tokenizer and canonical records and returning
a JSON-serialisable dict::

    {"task": kind, "n": number of records, "metrics": {...}, "examples": [per-record details]}

The per-record list keeps the prompt, the model's output or choice, the reference and whether it was
right, so a surprising number can be checked by reading the cases behind it.

Kinds, by how they score:
  - generation (`gradsift.evaluation.generation_tasks`): ``gsm8k`` (exact match of the final number),
    ``bbh`` (exact match of BIG-Bench-Hard targets) and ``refusal`` (refusal rate on harmful prompts, see
    `gradsift.evaluation.refusal`), all from greedy outputs;
  - loss (`gradsift.evaluation.loss_tasks`): ``target_loss`` (mean token loss of the gold answers of the
    target examples, the metric that still moves on small models whose generated answers are rarely right),
    ``utility`` (the same on a general task, optionally exact match) and ``preference`` (DPO implicit reward
    margin and preference accuracy on held-out pairs);
  - ``multiple_choice`` (`gradsift.evaluation.multiple_choice`): MMLU/ARC-style records scored by the
    log-likelihood of each option.

This module holds what they share: the kinds and settings, prompt building, the record check, the batched
forward pass of the likelihood tasks and the result dict.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import torch

from gradsift.atomic import write_json_atomic
from gradsift.data.records import Example
from gradsift.data.tokenize import Encoded, Truncation, bucket_batches, collate
from gradsift.evaluation.generate import eval_mode, model_device


class TaskKind(StrEnum):
    """Evaluation task kinds."""

    GSM8K = "gsm8k"
    BBH = "bbh"
    MULTIPLE_CHOICE = "multiple_choice"
    REFUSAL = "refusal"
    UTILITY = "utility"
    PREFERENCE = "preference"
    TARGET_LOSS = "target_loss"


FewShot = Sequence[tuple[str, str]] | str | None
"""Few-shot context: ``(question, answer)`` demonstrations (inserted as earlier chat turns) or a text prefix
(prepended to the question, e.g. a BIG-Bench-Hard ``cot-prompts`` file read with :func:`read_cot_prompt`)."""

BBH_COT_TEMPLATE = "Q: {question}\nA: Let's think step by step."
"""Question template matching the BIG-Bench-Hard chain-of-thought prompt files."""


@dataclass
class ScoringSettings:
    """How to score reference text by its loss.

    Attributes:
        max_length: Maximum tokens per sequence; longer ones are truncated (counted in ``n_truncated``).
        batch_size: Maximum sequences per forward pass; batches hold similar lengths.
        truncation: ``"right"`` or ``"left"``, as in `gradsift.data.tokenize.encode_messages`.
    """

    max_length: int = 1024
    batch_size: int = 8
    truncation: Truncation = "right"

    def __post_init__(self) -> None:
        if self.max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {self.max_length}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.truncation not in ("right", "left"):
            raise ValueError(f"truncation must be 'right' or 'left', got {self.truncation!r}")


# ---------------------------------------------------------------------------------------------------------------
# Prompts


def read_cot_prompt(path: str | Path) -> str:
    """Read a BIG-Bench-Hard ``cot-prompts/*.txt`` file without its canary header.

    The files start with a canary line and a ``-----`` separator that are not part of the prompt.
    """
    text = Path(path).read_text(encoding="utf-8")
    lines = text.splitlines()
    if lines and "canary" in lines[0].lower():
        sep = next((i for i, line in enumerate(lines) if line.strip() == "-----"), 0)
        text = "\n".join(lines[sep + 1 :])
    return text.strip()


def prompt_messages(record: Example) -> list[dict[str, str]]:
    """Turns to answer: those before the last assistant turn, or all turns when there is none."""
    if any(m["role"] == "assistant" for m in record.messages):
        return record.prompt_messages
    return list(record.messages)


def build_prompt(
    messages: Sequence[dict[str, str]], fewshot: FewShot = None, template: str = "{question}"
) -> list[dict[str, str]]:
    """Apply a question template and a few-shot context to a prompt chat.

    Args:
        messages: Prompt turns ending with a user turn.
        fewshot: Demonstrations or a text prefix (see :data:`FewShot`).
        template: Text with a ``{question}`` placeholder; the last user turn's content replaces it (also in the
            demonstrations' questions).

    Returns:
        New chat turns; the input is not modified.

    Raises:
        ValueError: The template lacks ``{question}`` or the chat does not end with a user turn.
    """
    if "{question}" not in template:
        raise ValueError(f"template must contain '{{question}}', got {template!r}")
    if not messages or messages[-1]["role"] != "user":
        raise ValueError("a prompt must end with a user turn")
    out = [dict(m) for m in messages]
    question = template.replace("{question}", out[-1]["content"])
    if isinstance(fewshot, str):
        question = fewshot.strip() + "\n\n" + question
    elif fewshot is not None:
        demos: list[dict[str, str]] = []
        for q, a in fewshot:
            demos.append({"role": "user", "content": template.replace("{question}", q)})
            demos.append({"role": "assistant", "content": a})
        first = next((i for i, m in enumerate(out) if m["role"] != "system"), len(out))
        out = out[:first] + demos + out[first:]
    out[-1] = {"role": "user", "content": question}
    return out


def last_user(messages: Sequence[dict[str, str]]) -> str:
    """Content of the last user turn ("" when there is none), as the per-record details show the prompt."""
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


# ---------------------------------------------------------------------------------------------------------------
# The shared steps of every task: check the records, run the model in batches, build the result dict


def require(records: Sequence[Any], what: str) -> None:
    """Refuse an empty evaluation.

    Raises:
        ValueError: `records` is empty (`what` names them in the message).
    """
    if not records:
        raise ValueError(f"no {what} to evaluate")


def task_result(kind: TaskKind, metrics: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The result dict of a task: ``{"task", "n", "metrics", "examples"}`` with one row per record."""
    return {"task": kind.value, "n": len(rows), "metrics": metrics, "examples": rows}


def share(rows: Sequence[dict[str, Any]], key: str) -> float:
    """Share of `rows` whose `key` is true (accuracy, exact match, refusal rate)."""
    return sum(1 for r in rows if r[key]) / len(rows)


def per_task(rows: Sequence[dict[str, Any]], key: str) -> dict[str, float]:
    """Share of true `key` per task label, over the rows that have one."""
    groups: dict[str, list[bool]] = {}
    for r in rows:
        if r.get("task") is not None:
            groups.setdefault(r["task"], []).append(bool(r[key]))
    return {t: sum(v) / len(v) for t, v in sorted(groups.items())}


def pad_id(tokenizer: Any) -> int:
    """The padding id of `tokenizer` (its eos token when it has no pad token).

    Raises:
        ValueError: The tokenizer has neither.
    """
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad token nor an eos token; set tokenizer.pad_token")
    return int(pad)


@torch.no_grad()
def forward_in_batches(
    model: Any,
    tokenizer: Any,
    items: Sequence[Sequence[Encoded]],
    compute: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    max_tokens: int,
    batch_size: int,
) -> list[torch.Tensor]:
    """Run `compute` on `items` in batches of similar length (the model in eval mode, no gradients).

    Each item is one or more sequences of the same count (one example; a pair's chosen and rejected
    sequences). A batch holds the first sequence of each of its items, then the second, and so on, so a
    batch of B pairs is ``[chosen_1..chosen_B, rejected_1..rejected_B]``.

    Args:
        model: Causal LM.
        tokenizer: Its tokenizer (for the padding id).
        items: The encoded sequences of each item [N][S].
        compute: Maps a collated batch on the model's device (``input_ids``, ``attention_mask``, ``labels``,
            each [S*B, T]) to one row per item [B, ...].
        max_tokens: Padded tokens per batch (`gradsift.data.tokenize.bucket_batches`), counted by the longest
            sequence of each item.
        batch_size: Items per batch at most.

    Returns:
        The row of each item, in item order, on the CPU (in `compute`'s dtype).
    """
    lengths = [max(len(s) for s in item) for item in items]
    rows: list[torch.Tensor] = [torch.empty(0)] * len(items)
    device = model_device(model)
    with eval_mode(model):
        for idx in bucket_batches(lengths, max_tokens, batch_size):
            seqs = [items[i][j] for j in range(len(items[idx[0]])) for i in idx]
            batch = {k: v.to(device) for k, v in collate(seqs, pad_id(tokenizer)).items()}
            out = compute(batch).cpu()
            for row, i in enumerate(idx):
                rows[i] = out[row]
    return rows


def write_results(path: str | Path, result: dict[str, Any]) -> Path:
    """Write a result dict as JSON atomically (temporary file in the same folder, then rename).

    Creates the parent folder when missing.

    Raises:
        ValueError: The result holds NaN/inf or something JSON cannot represent; the file is then untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, result)
    return path
