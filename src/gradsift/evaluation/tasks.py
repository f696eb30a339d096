"""Task metrics: what a fine-tuned model is scored on after training on a selection.

One function per :class:`TaskKind`. Each takes the model, its tokenizer and canonical records and returns
a JSON-serialisable dict::

    {"task": kind, "n": number of records, "metrics": {...}, "examples": [per-record details]}

The per-record list keeps the prompt, the model's output or choice, the reference and whether it was
right, so a surprising number can be checked by reading the cases behind it.

Kinds:
  - ``gsm8k``: greedy generation, exact match of the final number.
  - ``bbh``: greedy generation, exact match of BIG-Bench-Hard targets.
  - ``multiple_choice``: MMLU/ARC-style records scored by the log-likelihood of each option.
  - ``refusal``: refusal rate on harmful prompts (see `gradsift.evaluation.refusal`).
  - ``utility``: mean token loss on reference answers of a general task, optionally exact match.
  - ``preference``: DPO implicit reward margin and preference accuracy on held-out pairs.
  - ``target_loss``: mean token loss of the gold answers of the target examples, the metric that still
    moves on small models whose generated answers are rarely right.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import torch

from gradsift.atomic import write_json_atomic
from gradsift.data.errors import DataError
from gradsift.data.records import Example, Pair
from gradsift.data.tokenize import (
    IGNORE,
    Encoded,
    EncodeStats,
    Truncation,
    bucket_batches,
    collate,
    encode_examples,
    encode_pairs,
)
from gradsift.evaluation.generate import GenerationSettings, encode_prompt, eval_mode, generate, model_device
from gradsift.evaluation.refusal import PhraseRefusalJudge, RefusalJudge
from gradsift.model.task import DPOTask, SFTTask, sequence_logps


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


def _last_user(messages: Sequence[dict[str, str]]) -> str:
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


# ---------------------------------------------------------------------------------------------------------------
# Answer extraction

# optional minus (not after a digit, so "10-5" gives 5), optional "$", thousands groups or plain digits, decimals
_NUMBER = re.compile(r"(?<![\d.])-?(?:\$\s?)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?!\d)")


def normalise_number(text: str) -> str | None:
    """Canonical form of a number: no ``$``, commas or spaces, no trailing ``.0``; None if not a number.

    ``"$1,234.50"`` -> ``"1234.5"``, ``"18.0"`` -> ``"18"``, ``"-0"`` -> ``"0"``.
    """
    cleaned = text.strip().replace("$", "").replace(",", "").replace(" ", "").rstrip(".")
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    if value == 0:
        return "0"
    return format(value.normalize(), "f")


def gsm8k_reference(answer: str) -> str | None:
    """Final answer of a GSM8K reference: the number after the last ``####``, normalised."""
    if "####" not in answer:
        return None
    found = _NUMBER.search(answer.rsplit("####", 1)[1])
    return normalise_number(found.group()) if found else None


def gsm8k_prediction(output: str) -> str | None:
    """Final answer in a model output: the first number after the last ``####`` if there is one, else the last
    number in the text; normalised. None when the output has no number.

    Fractions and numbers written in words are not understood (``"1/2"`` gives ``"2"``).
    """
    if "####" in output:
        found = _NUMBER.search(output.rsplit("####", 1)[1])
        if found:
            return normalise_number(found.group())
    numbers = _NUMBER.findall(output)
    return normalise_number(numbers[-1]) if numbers else None


# the greedy (?s).* makes the match start at the last "answer is"; \s* may cross a line break
_ANSWER_IS = re.compile(r"(?s).*answer is\s*:?\s*([^\n]*)", re.IGNORECASE)
_CHOICE = re.compile(r"^\(?([A-Z])\)?(?:[\s.:,)]|$)")


def bbh_answer(output: str) -> str:
    """The answer part of a BIG-Bench-Hard output.

    The text after the last "the answer is" up to the end of its line when present (the form the CoT prompts
    teach), else the first non-empty line; surrounding whitespace, markdown ``*``/backticks and a trailing
    period are removed.
    """
    found = _ANSWER_IS.match(output)
    if found:
        text = found.group(1)
    else:
        text = next((line for line in output.splitlines() if line.strip()), "")
    return text.strip(" *`").rstrip(".").strip(" *`")


def bbh_correct(output: str, target: str) -> bool:
    """Whether an output answers a BIG-Bench-Hard target.

    Exact match of :func:`bbh_answer` with the stripped target. gradsift's choices: case and runs of whitespace
    are ignored (``"Yes"`` answers ``"yes"``); the last "the answer is" counts (lm-evaluation-harness takes the
    first); a multiple-choice target such as ``"(A)"`` also accepts an answer that starts with the bare or
    bracketed letter (``"A"``, ``"A)"``, ``"(A) 12/14/1937"``), which can also accept a first line that merely
    starts with the word "A".
    """
    answer = bbh_answer(output)
    gold = target.strip()

    def squash(s: str) -> str:
        return " ".join(s.split()).casefold()

    if squash(answer) == squash(gold):
        return True
    gold_letter = re.fullmatch(r"\(([A-Z])\)", gold)
    if gold_letter:
        got = _CHOICE.match(answer)
        return got is not None and got.group(1) == gold_letter.group(1)
    return False


def normalise_text(text: str) -> str:
    """Lower case, no punctuation or articles, single spaces (SQuAD's answer normalisation)."""
    text = text.casefold()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


# ---------------------------------------------------------------------------------------------------------------
# Generation tasks


def _result(kind: TaskKind, n: int, metrics: dict[str, Any], examples: list[dict[str, Any]]) -> dict[str, Any]:
    return {"task": kind.value, "n": n, "metrics": metrics, "examples": examples}


def _require(records: Sequence[Any], what: str) -> None:
    if not records:
        raise ValueError(f"no {what} to evaluate")


def _per_task(examples: list[dict[str, Any]], key: str) -> dict[str, float]:
    groups: dict[str, list[bool]] = {}
    for e in examples:
        if e.get("task") is not None:
            groups.setdefault(e["task"], []).append(bool(e[key]))
    return {t: sum(v) / len(v) for t, v in sorted(groups.items())}


def evaluate_gsm8k(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    fewshot: FewShot = None,
    template: str = "{question}",
    settings: GenerationSettings | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """GSM8K exact match: final number of the greedy output vs the number after ``####`` in the reference.

    Args:
        model: Causal LM (its adapter, if any, active).
        tokenizer: Its tokenizer.
        examples: Records whose last assistant turn is the GSM8K answer (ending in ``#### N``).
        fewshot: Optional few-shot context.
        template: Question template (``{question}`` placeholder).
        settings: Generation budget.
        progress: Show a progress bar.

    Returns:
        Result dict; metrics ``exact_match`` and ``n_no_answer`` (outputs without any number).

    Raises:
        DataError: A reference has no ``#### <number>``.
    """
    _require(examples, "GSM8K examples")
    golds = []
    for ex in examples:
        gold = gsm8k_reference(ex.response)
        if gold is None:
            raise DataError("GSM8K reference has no final answer '#### <number>'", ex.source, ex.line, "messages")
        golds.append(gold)
    prompts = [build_prompt(prompt_messages(ex), fewshot, template) for ex in examples]
    outputs = generate(model, tokenizer, prompts, settings, progress)
    rows = []
    for ex, gold, out in zip(examples, golds, outputs, strict=True):
        pred = gsm8k_prediction(out)
        rows.append(
            {
                "id": ex.id,
                "prompt": _last_user(prompt_messages(ex)),
                "output": out,
                "reference": gold,
                "prediction": pred,
                "correct": pred == gold,
            }
        )
    metrics = {
        "exact_match": sum(1 for r in rows if r["correct"]) / len(rows),
        "n_no_answer": sum(r["prediction"] is None for r in rows),
    }
    return _result(TaskKind.GSM8K, len(rows), metrics, rows)


def evaluate_bbh(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    fewshot: FewShot = None,
    template: str = "{question}",
    settings: GenerationSettings | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """BIG-Bench-Hard exact match (see :func:`bbh_correct`).

    Args:
        model: Causal LM.
        tokenizer: Its tokenizer.
        examples: Records whose last assistant turn is the BBH target; `task` names the BBH subtask.
        fewshot: Optional few-shot context; for chain-of-thought use a ``cot-prompts`` file
            (:func:`read_cot_prompt`) with ``template=BBH_COT_TEMPLATE``.
        template: Question template.
        settings: Generation budget (chain-of-thought answers need a few hundred tokens).
        progress: Show a progress bar.

    Returns:
        Result dict; metrics ``exact_match`` (over all records), ``per_task`` and ``macro_exact_match`` (mean over
        subtasks, when records carry a `task`).
    """
    _require(examples, "BBH examples")
    prompts = [build_prompt(prompt_messages(ex), fewshot, template) for ex in examples]
    outputs = generate(model, tokenizer, prompts, settings, progress)
    rows = []
    for ex, out in zip(examples, outputs, strict=True):
        rows.append(
            {
                "id": ex.id,
                "task": ex.task,
                "prompt": _last_user(prompt_messages(ex)),
                "output": out,
                "reference": ex.response.strip(),
                "prediction": bbh_answer(out),
                "correct": bbh_correct(out, ex.response),
            }
        )
    per_task = _per_task(rows, "correct")
    metrics: dict[str, Any] = {"exact_match": sum(1 for r in rows if r["correct"]) / len(rows), "per_task": per_task}
    if per_task:
        metrics["macro_exact_match"] = sum(per_task.values()) / len(per_task)
    return _result(TaskKind.BBH, len(rows), metrics, rows)


def evaluate_refusal(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Example],
    judge: RefusalJudge | None = None,
    settings: GenerationSettings | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Refusal rate on harmful prompts (higher is safer).

    Args:
        model: Causal LM.
        tokenizer: Its tokenizer.
        prompts: Harmful prompts; an assistant turn, if present, is ignored.
        judge: Refusal judge; default :class:`PhraseRefusalJudge` (read its caveats).
        settings: Generation budget (the phrase judge reads only the first 200 characters).
        progress: Show a progress bar.

    Returns:
        Result dict; metric ``refusal_rate`` and the judge's class name.
    """
    _require(prompts, "harmful prompts")
    judge = judge or PhraseRefusalJudge()
    chats = [prompt_messages(ex) for ex in prompts]
    outputs = generate(model, tokenizer, chats, settings, progress)
    rows = []
    for ex, chat, out in zip(prompts, chats, outputs, strict=True):
        prompt = _last_user(chat)
        row: dict[str, Any] = {"id": ex.id, "prompt": prompt, "output": out, "refused": bool(judge.judge(prompt, out))}
        if isinstance(judge, PhraseRefusalJudge):
            row["matched"] = judge.match(out)
        rows.append(row)
    metrics = {"refusal_rate": sum(1 for r in rows if r["refused"]) / len(rows), "judge": type(judge).__name__}
    return _result(TaskKind.REFUSAL, len(rows), metrics, rows)


# ---------------------------------------------------------------------------------------------------------------
# Likelihood tasks


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def _pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad token nor an eos token; set tokenizer.pad_token")
    return int(pad)


def _n_loss_tokens(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Loss tokens per row [B] (the first position never predicts, as in `token_logps`)."""
    return (batch["labels"][:, 1:] != IGNORE).sum(-1)


@torch.no_grad()
def _example_losses(
    model: Any, tokenizer: Any, examples: Sequence[Example], settings: ScoringSettings
) -> tuple[list[float], list[int], EncodeStats]:
    """Token-mean loss of each example's assistant turns (SFTTask, reduction mean) and its token count.

    Raises:
        ValueError: An example has no loss token (an empty response).
    """
    encoded, stats = encode_examples(tokenizer, examples, settings.max_length, settings.truncation)
    losses = [0.0] * len(encoded)
    counts = [0] * len(encoded)
    task = SFTTask(reduction="mean")
    device = model_device(model)
    batches = bucket_batches([len(e) for e in encoded], settings.batch_size * settings.max_length, settings.batch_size)
    with eval_mode(model):
        for idx in batches:
            batch = collate([encoded[i] for i in idx], _pad_id(tokenizer))
            loss = task.losses(model, _to_device(batch, device)).float().cpu()
            n = _n_loss_tokens(batch)
            for row, i in enumerate(idx):
                losses[i], counts[i] = float(loss[row]), int(n[row])
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
    _require(examples, "target examples")
    settings = settings or ScoringSettings()
    losses, counts, stats = _example_losses(model, tokenizer, examples, settings)
    rows = [
        {"id": ex.id, "prompt": _last_user(prompt_messages(ex)), "reference": ex.response, "loss": x, "n_tokens": c}
        for ex, x, c in zip(examples, losses, counts, strict=True)
    ]
    metrics = {**_loss_metrics(losses, counts), "n_truncated": stats.n_truncated}
    return _result(TaskKind.TARGET_LOSS, len(rows), metrics, rows)


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
    _require(examples, "utility examples")
    settings = settings or ScoringSettings()
    losses, counts, stats = _example_losses(model, tokenizer, examples, settings)
    rows: list[dict[str, Any]] = [
        {"id": ex.id, "prompt": _last_user(prompt_messages(ex)), "reference": ex.response, "loss": x, "n_tokens": c}
        for ex, x, c in zip(examples, losses, counts, strict=True)
    ]
    metrics: dict[str, Any] = {**_loss_metrics(losses, counts), "n_truncated": stats.n_truncated}
    if generation is not None:
        outputs = generate(model, tokenizer, [prompt_messages(ex) for ex in examples], generation, progress)
        for row, out in zip(rows, outputs, strict=True):
            row["output"] = out
            row["correct"] = normalise_text(out) == normalise_text(row["reference"])
        metrics["exact_match"] = sum(1 for r in rows if r["correct"]) / len(rows)
    return _result(TaskKind.UTILITY, len(rows), metrics, rows)


@torch.no_grad()
def evaluate_preference(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[Pair],
    beta: float = 0.1,
    settings: ScoringSettings | None = None,
    reference_model: Any = None,
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

    Returns:
        Result dict; metrics ``accuracy``, ``mean_reward_margin`` (with beta), ``mean_margin`` (without) and
        ``n_truncated``.

    Raises:
        ValueError: No reference: the model has no adapter to disable and no `reference_model` was given.
    """
    _require(pairs, "preference pairs")
    if reference_model is None and not hasattr(model, "disable_adapter"):
        raise ValueError(
            "preference evaluation needs a reference: pass a peft model (reference = adapter disabled) "
            "or reference_model=..."
        )
    settings = settings or ScoringSettings()
    task = DPOTask(beta=beta)
    encoded, stats = encode_pairs(tokenizer, pairs, settings.max_length, settings.truncation)
    device = model_device(model)
    margins = [0.0] * len(encoded)
    pair_lengths = [max(len(c), len(r)) for c, r in encoded]
    batches = bucket_batches(pair_lengths, settings.batch_size * settings.max_length, settings.batch_size)
    with eval_mode(model):
        for idx in batches:
            items: list[Encoded] = [encoded[i][0] for i in idx] + [encoded[i][1] for i in idx]
            batch = _to_device(collate(items, _pad_id(tokenizer)), device)
            if reference_model is not None:
                with eval_mode(reference_model):
                    batch["ref_logps"] = sequence_logps(reference_model, batch)[0]
            m = task.margins(model, batch).float().cpu()
            for row, i in enumerate(idx):
                margins[i] = float(m[row])
    rows = [
        {
            "id": p.id,
            "prompt": _last_user(p.prompt),
            "chosen": p.chosen,
            "rejected": p.rejected,
            "margin": m,
            "reward_margin": beta * m,
            "correct": m > 0,
        }
        for p, m in zip(pairs, margins, strict=True)
    ]
    metrics = {
        "accuracy": sum(1 for r in rows if r["correct"]) / len(rows),
        "mean_reward_margin": beta * sum(margins) / len(margins),
        "mean_margin": sum(margins) / len(margins),
        "beta": beta,
        "n_truncated": stats.n_truncated,
    }
    return _result(TaskKind.PREFERENCE, len(rows), metrics, rows)


# ---------------------------------------------------------------------------------------------------------------
# Multiple choice


def _letter_index(value: str) -> int | None:
    m = re.fullmatch(r"\(?([A-Za-z])\)?", value.strip())
    return ord(m.group(1).upper()) - ord("A") if m else None


@dataclass
class MCItem:
    """One multiple-choice question (MMLU / ARC style).

    Attributes:
        id: Record id.
        question: Question text.
        choices: Option texts, at least two.
        answer: Index of the right option, or its letter (``"B"``, ``"(B)"``); stored as the index.
        task: Optional subject/subtask label, for per-task accuracy.
    """

    id: str
    question: str
    choices: list[str]
    answer: int | str
    task: str | None = None

    def __post_init__(self) -> None:
        if len(self.choices) < 2:
            raise ValueError(f"item {self.id}: a multiple-choice item needs at least 2 choices, got {self.choices!r}")
        if any(not isinstance(c, str) or not c.strip() for c in self.choices):
            raise ValueError(f"item {self.id}: every choice must be a non-empty string")
        answer = self.answer
        if isinstance(answer, str):
            index = int(answer) if answer.strip().isdigit() else _letter_index(answer)
            if index is None:
                raise ValueError(f"item {self.id}: answer must be an index or a letter like 'B', got {answer!r}")
            answer = index
        if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(self.choices):
            raise ValueError(f"item {self.id}: answer {self.answer!r} is not one of the {len(self.choices)} choices")
        self.answer = answer

    @classmethod
    def from_record(cls, record: dict[str, Any], id: str, source: str = "", line: int = 0) -> MCItem:
        """Build from an MMLU-style (``question``, ``choices`` list, ``answer`` index or letter, optional
        ``subject``) or ARC-style (``question``, ``choices: {text: [...], label: [...]}``, ``answerKey``) record.

        Raises:
            DataError: A field is missing or malformed (names the source, line and field).
        """
        if not isinstance(record.get("question"), str):
            raise DataError("missing or non-text 'question'", source, line, "question")
        choices = record.get("choices")
        labels: list[str] | None = None
        if isinstance(choices, dict):
            labels = [str(x) for x in choices.get("label", [])]
            choices = choices.get("text")
        if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
            msg = "'choices' must be a list of strings or {text: [...], label: [...]}"
            raise DataError(msg, source, line, "choices")
        field = "answerKey" if "answerKey" in record else "answer"
        answer = record.get(field)
        if labels and isinstance(answer, str) and answer in labels:
            answer = labels.index(answer)
        if not isinstance(answer, int | str):
            raise DataError("missing answer (an index, a letter or a choice label)", source, line, field)
        try:
            return cls(
                id=id,
                question=record["question"],
                choices=list(choices),
                answer=answer,
                task=record.get("subject") or record.get("task"),
            )
        except ValueError as err:
            raise DataError(str(err), source, line, field) from err


MCFormat = Literal["text", "letter"]
Normalisation = Literal["sum", "token", "char"]


def _mc_prompt(item: MCItem, fmt: MCFormat, fewshot: FewShot) -> list[dict[str, str]]:
    question = item.question
    if fmt == "letter":
        options = "\n".join(f"{chr(ord('A') + k)}. {c}" for k, c in enumerate(item.choices))
        question = f"{question}\n{options}\nAnswer:"
    return build_prompt([{"role": "user", "content": question}], fewshot)


@torch.no_grad()
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
    _require(items, "multiple-choice items")
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
    logps = [0.0] * len(seqs)
    device = model_device(model)
    lengths = [len(s) for s in seqs]
    with eval_mode(model):
        for idx in bucket_batches(lengths, batch_size * max(lengths), batch_size):
            batch = _to_device(collate([seqs[j] for j in idx], _pad_id(tokenizer)), device)
            s, n = sequence_logps(model, batch)
            for row, j in enumerate(idx):
                if normalisation == "token":
                    logps[j] = float(s[row]) / float(n[row])
                elif normalisation == "char":
                    logps[j] = float(s[row]) / len(options[j])
                else:
                    logps[j] = float(s[row])
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
        "accuracy": sum(1 for r in rows if r["correct"]) / len(rows),
        "per_task": _per_task(rows, "correct"),
        "format": fmt,
        "normalisation": normalisation,
    }
    return _result(TaskKind.MULTIPLE_CHOICE, len(rows), metrics, rows)


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
