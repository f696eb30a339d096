"""Canonical records every reader produces and every later stage consumes.

A candidate or target example is a chat (`messages`, loss on the assistant turns);
a preference pair is a prompt chat plus a chosen and a rejected assistant response;
a multiple-choice item (MMLU/ARC style) is a question, its options and the index of the right one.
The original record is kept intact in `raw` so outputs can be written in the user's format.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from gradsift.data.errors import DataError


class Kind(StrEnum):
    """What a data file holds."""

    SFT = "sft"
    TARGET = "target"
    PAIR = "pair"


ROLES = ("system", "user", "assistant")


@dataclass
class Example:
    """One SFT candidate or target example.

    Attributes:
        id: Stable id: the record's own `id` field when given, else a content hash.
        messages: Chat turns `{"role": "system"|"user"|"assistant", "content": str}`; at least one
            assistant turn. The loss covers the assistant turns.
        task: Optional task/skill label (targets: the target task; pools: a known source label).
        rejected: Optional unwanted response to the last prompt (PRISM's `y-`).
        raw: The original record, unchanged.
        source: File the record came from.
        line: 1-based line (JSONL/CSV) or record index (JSON, Parquet) in `source`.
    """

    id: str
    messages: list[dict[str, str]]
    task: str | None = None
    rejected: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    line: int = 0

    @property
    def prompt_messages(self) -> list[dict[str, str]]:
        """Turns before the last assistant turn."""
        last = max(i for i, m in enumerate(self.messages) if m["role"] == "assistant")
        return self.messages[:last]

    @property
    def response(self) -> str:
        """Content of the last assistant turn."""
        return [m for m in self.messages if m["role"] == "assistant"][-1]["content"]


@dataclass
class Pair:
    """One preference pair `(x, y_w, y_l)`.

    Attributes:
        id: Stable id: the record's own `id` field when given, else a content hash.
        prompt: Chat turns up to and including the last user turn.
        chosen: The preferred assistant response `y_w`.
        rejected: The dispreferred assistant response `y_l`.
        task: Optional label.
        raw: The original record, unchanged.
        source: File the record came from.
        line: 1-based line or record index in `source`.
    """

    id: str
    prompt: list[dict[str, str]]
    chosen: str
    rejected: str
    task: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    line: int = 0


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


def content_id(payload: Any) -> str:
    """Stable 16-hex-digit id from JSON-serialisable content (sorted keys, UTF-8)."""
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8", errors="surrogatepass")).hexdigest()[:16]


def fingerprint(records: list[Example] | list[Pair]) -> str:
    """Fingerprint of a data set: hash of ids and contents, in order."""
    h = hashlib.sha256()
    for r in records:
        if isinstance(r, Pair):
            payload: Any = [r.id, r.prompt, r.chosen, r.rejected]
        else:
            payload = [r.id, r.messages, r.rejected]
        h.update(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode("utf-8"))
    return h.hexdigest()[:16]
