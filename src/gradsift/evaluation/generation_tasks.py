"""Generation tasks: ``gsm8k`` and ``bbh`` (exact match of greedy answers) and ``refusal`` (refusal rate).

Each model output is decoded greedily (`gradsift.evaluation.generate`); the answer extraction here decides
what counts as right. The result dicts are those of `gradsift.evaluation.tasks`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from gradsift.data.errors import DataError
from gradsift.data.records import Example
from gradsift.evaluation.generate import GenerationSettings, generate
from gradsift.evaluation.refusal import PhraseRefusalJudge, RefusalJudge
from gradsift.evaluation.tasks import (
    FewShot,
    TaskKind,
    build_prompt,
    last_user,
    per_task,
    prompt_messages,
    require,
    share,
    task_result,
)

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


# ---------------------------------------------------------------------------------------------------------------
# Tasks


def _answer(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    fewshot: FewShot,
    template: str,
    settings: GenerationSettings | None,
    progress: bool,
) -> list[str]:
    """Greedy outputs for the examples' prompts, with the question template and few-shot context applied."""
    prompts = [build_prompt(prompt_messages(ex), fewshot, template) for ex in examples]
    return generate(model, tokenizer, prompts, settings, progress)


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
    require(examples, "GSM8K examples")
    golds = []
    for ex in examples:
        gold = gsm8k_reference(ex.response)
        if gold is None:
            raise DataError("GSM8K reference has no final answer '#### <number>'", ex.source, ex.line, "messages")
        golds.append(gold)
    outputs = _answer(model, tokenizer, examples, fewshot, template, settings, progress)
    rows = []
    for ex, gold, out in zip(examples, golds, outputs, strict=True):
        pred = gsm8k_prediction(out)
        rows.append(
            {
                "id": ex.id,
                "prompt": last_user(prompt_messages(ex)),
                "output": out,
                "reference": gold,
                "prediction": pred,
                "correct": pred == gold,
            }
        )
    metrics = {
        "exact_match": share(rows, "correct"),
        "n_no_answer": sum(r["prediction"] is None for r in rows),
    }
    return task_result(TaskKind.GSM8K, metrics, rows)


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
            (`gradsift.evaluation.tasks.read_cot_prompt`) with ``template=BBH_COT_TEMPLATE``.
        template: Question template.
        settings: Generation budget (chain-of-thought answers need a few hundred tokens).
        progress: Show a progress bar.

    Returns:
        Result dict; metrics ``exact_match`` (over all records), ``per_task`` and ``macro_exact_match`` (mean over
        subtasks, when records carry a `task`).
    """
    require(examples, "BBH examples")
    outputs = _answer(model, tokenizer, examples, fewshot, template, settings, progress)
    rows = []
    for ex, out in zip(examples, outputs, strict=True):
        rows.append(
            {
                "id": ex.id,
                "task": ex.task,
                "prompt": last_user(prompt_messages(ex)),
                "output": out,
                "reference": ex.response.strip(),
                "prediction": bbh_answer(out),
                "correct": bbh_correct(out, ex.response),
            }
        )
    by_task = per_task(rows, "correct")
    metrics: dict[str, Any] = {"exact_match": share(rows, "correct"), "per_task": by_task}
    if by_task:
        metrics["macro_exact_match"] = sum(by_task.values()) / len(by_task)
    return task_result(TaskKind.BBH, metrics, rows)


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
    require(prompts, "harmful prompts")
    judge = judge or PhraseRefusalJudge()
    chats = [prompt_messages(ex) for ex in prompts]
    outputs = generate(model, tokenizer, chats, settings, progress)
    rows = []
    for ex, chat, out in zip(prompts, chats, outputs, strict=True):
        prompt = last_user(chat)
        row: dict[str, Any] = {"id": ex.id, "prompt": prompt, "output": out, "refused": bool(judge.judge(prompt, out))}
        if isinstance(judge, PhraseRefusalJudge):
            row["matched"] = judge.match(out)
        rows.append(row)
    metrics = {"refusal_rate": share(rows, "refused"), "judge": type(judge).__name__}
    return task_result(TaskKind.REFUSAL, metrics, rows)
