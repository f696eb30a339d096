"""Recognise record formats and turn rows into canonical chats.

A :class:`Schema` is inferred once from the first row of a source (or given with ``fmt=``); it fixes
the format and the column each part of a record comes from, then parses every row into a
:class:`Parsed` chat: the turns ending with the (chosen) assistant response, plus an optional
rejected response, task label and id.

Formats (:class:`Format`), with the columns recognised by default:

- ``alpaca``: ``instruction``, optional ``input`` (or Dolly's ``context``), ``output`` (or
  ``response``). The user turn is the instruction, then a blank line and the input when there is one.
- ``prompt_response``: a prompt column (``prompt``, ``question``, ``query``, ``input``, ``goal``) and a
  response column (``response``, ``completion``, ``answer``, ``output``, ``target``): GSM8K's
  question/answer, BIG-Bench-Hard's input/target, AdvBench's goal/target. Either may also be a list
  of chat turns (TRL's conversational prompt-completion).
- ``messages``: ``messages``, a list of ``{"role", "content"}`` turns.
- ``sharegpt``: ``conversations``, a list of ``{"from", "value"}`` turns (human/gpt/system).
- ``flan_cot``: FLAN's headerless chain-of-thought TSV (question, answer, rationale). The user turn is
  the question, the response ``"{rationale} So the answer is {answer}."`` (FLAN's own template); the
  literal ``\\n`` sequences FLAN stores become newlines, as FLAN's reader does. Task label: the file
  name without suffixes and a trailing split name (``gsm8k_train.tsv.gz`` -> ``gsm8k``).
- ``pair``: ``prompt`` (or ``question``, ``instruction``, ``query``, ``input``), ``chosen``,
  ``rejected``; each a string or a list of chat turns. When ``chosen`` and ``rejected`` are whole
  conversations they must differ only in the last (assistant) turn, and the prompt is the shared
  prefix.
- ``sharegpt_pair``: LLaMA-Factory's ``conversations`` prompt with ``chosen``/``rejected`` given as
  ``{"from": "gpt", "value": ...}`` turns.
- ``hh``: Anthropic HH-RLHF ``chosen``/``rejected`` transcripts with ``\\n\\nHuman:`` /
  ``\\n\\nAssistant:`` turns. The prompt is the two transcripts' common text cut at its last
  ``\\n\\nAssistant:``; the responses are what follows in each.

Every format also reads an optional ``id``, ``task`` (or ``category``), ``system`` prompt and, for the
single-response formats, a ``rejected`` response (PRISM's ``y-`` for targets). A :class:`FieldMap`
names other columns.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from gradsift.data.errors import DataError


class Format(StrEnum):
    """Record formats gradsift recognises (see the module docstring)."""

    ALPACA = "alpaca"
    PROMPT_RESPONSE = "prompt_response"
    MESSAGES = "messages"
    SHAREGPT = "sharegpt"
    FLAN_COT = "flan_cot"
    PAIR = "pair"
    SHAREGPT_PAIR = "sharegpt_pair"
    HH = "hh"

    @property
    def is_pair(self) -> bool:
        """Whether records hold a chosen and a rejected response."""
        return self in (Format.PAIR, Format.SHAREGPT_PAIR, Format.HH)

    @classmethod
    def parse(cls, value: Format | str) -> Format:
        """The format named by `value`.

        Raises:
            ValueError: `value` names no format.
        """
        try:
            return cls(value)
        except ValueError:
            names = ", ".join(f.value for f in cls)
            raise ValueError(f"unknown format {value!r}; expected one of: {names}") from None


@dataclass(frozen=True)
class FieldMap:
    """Column names for the parts of a record, for data whose columns have other names.

    Every attribute is optional; ``None`` means "the format's usual column names".
    """

    id: str | None = field(default=None, metadata={"help": "Column with a stable record id."})
    prompt: str | None = field(
        default=None, metadata={"help": "Column with the prompt or instruction (text or chat turns)."}
    )
    input: str | None = field(default=None, metadata={"help": "Alpaca-style extra input appended to the instruction."})
    response: str | None = field(default=None, metadata={"help": "Column with the wanted response."})
    messages: str | None = field(
        default=None, metadata={"help": "Column with a list of chat turns (role/content or from/value)."}
    )
    system: str | None = field(default=None, metadata={"help": "Column with a system prompt."})
    chosen: str | None = field(default=None, metadata={"help": "Column with the preferred response."})
    rejected: str | None = field(default=None, metadata={"help": "Column with the dispreferred response."})
    task: str | None = field(default=None, metadata={"help": "Column with a task or skill label."})

    def __post_init__(self) -> None:
        seen: dict[str, str] = {}
        for role, column in self.given().items():
            if not isinstance(column, str) or not column:
                raise ValueError(f"FieldMap.{role} must be a column name (a non-empty string) or None, got {column!r}")
            if column in seen:
                raise ValueError(f"FieldMap.{seen[column]} and FieldMap.{role} both name the column {column!r}")
            seen[column] = role

    def given(self) -> dict[str, str]:
        """The roles that name a column, in declaration order."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}


@dataclass(frozen=True)
class Parsed:
    """One record in canonical form, before ids are assigned.

    Attributes:
        messages: Chat turns ending with the assistant response (the chosen one for pairs).
        rejected: The dispreferred response to the same prompt, if the record has one.
        task: Task label, if any.
        id: The record's own id, if it has one.
        response_field: Column the final response came from (for error messages).
        rejected_field: Column the rejected response came from.
    """

    messages: list[dict[str, str]]
    rejected: str | None
    task: str | None
    id: str | None
    response_field: str
    rejected_field: str | None


# Default column names per role, in the order they are tried.
_COMMON = {"id": ("id",), "task": ("task", "category"), "system": ("system",)}
_COLUMNS: dict[Format, dict[str, tuple[str, ...]]] = {
    Format.ALPACA: {
        "prompt": ("instruction",),
        "input": ("input", "context"),
        "response": ("output", "response"),
        "rejected": ("rejected",),
    },
    Format.PROMPT_RESPONSE: {
        "prompt": ("prompt", "question", "query", "input", "goal"),
        "response": ("response", "completion", "answer", "output", "target"),
        "rejected": ("rejected",),
    },
    Format.MESSAGES: {"messages": ("messages", "conversations"), "rejected": ("rejected",)},
    Format.SHAREGPT: {"messages": ("conversations", "messages"), "rejected": ("rejected",)},
    Format.FLAN_COT: {},
    Format.PAIR: {
        "prompt": ("prompt", "question", "instruction", "query", "input"),
        "chosen": ("chosen",),
        "rejected": ("rejected",),
    },
    Format.SHAREGPT_PAIR: {
        "messages": ("conversations", "messages"),
        "chosen": ("chosen",),
        "rejected": ("rejected",),
    },
    Format.HH: {"chosen": ("chosen",), "rejected": ("rejected",)},
}
_REQUIRED: dict[Format, tuple[str, ...]] = {
    Format.ALPACA: ("prompt", "response"),
    Format.PROMPT_RESPONSE: ("prompt", "response"),
    Format.MESSAGES: ("messages",),
    Format.SHAREGPT: ("messages",),
    Format.FLAN_COT: (),
    Format.PAIR: ("chosen", "rejected"),
    Format.SHAREGPT_PAIR: ("messages", "chosen", "rejected"),
    Format.HH: ("chosen", "rejected"),
}
# Formats whose records carry no system prompt column.
_NO_SYSTEM = (Format.FLAN_COT, Format.HH)

_FLAN_COLUMNS = ("col0", "col1", "col2")  # question, answer, rationale
_FLAN_SPLIT_SUFFIX = re.compile(r"_(train|dev|valid|validation|test)$")
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ASSISTANT = "\n\nAssistant:"

_ROLE_NAMES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant"}

#: Column names some format reads by default; CSV/TSV header detection uses them.
KNOWN_COLUMNS = frozenset(
    name for roles in (*_COLUMNS.values(), _COMMON) for names in roles.values() for name in names
)

_FORMAT_HELP = (
    "alpaca (instruction, input, output), prompt_response (prompt/question/query/input/goal with "
    "response/completion/answer/output/target), messages (messages: [{role, content}]), sharegpt "
    "(conversations: [{from, value}]), flan_cot (headerless TSV: question, answer, rationale), pair "
    "(prompt, chosen, rejected), sharegpt_pair (conversations, chosen, rejected), hh (chosen, rejected "
    "HH-RLHF transcripts)"
)


def flan_task(path: str | Path) -> str:
    """Task label of a FLAN chain-of-thought file: ``.../gsm8k_train.tsv.gz`` -> ``gsm8k``."""
    name = Path(path).name
    stem = name[: -len(".gz")] if name.endswith(".gz") else name
    stem, _ = os.path.splitext(stem)
    return _FLAN_SPLIT_SUFFIX.sub("", stem)


@dataclass(frozen=True)
class Schema:
    """A format plus the resolved column of each part; parses rows.

    Attributes:
        fmt: The record format.
        columns: The column each role is read from (roles the format does not use are ``None``).
        task: Task label for rows without one (FLAN: from the file name).
    """

    fmt: Format
    columns: FieldMap
    task: str | None = None

    def parse(self, row: Mapping[str, Any], *, path: str | Path | None = None, line: int | None = None) -> Parsed:
        """Turn one row into a canonical chat.

        Args:
            row: The record.
            path: Its source, for error messages.
            line: Its line or record index, for error messages.

        Returns:
            The parsed record.

        Raises:
            DataError: A column is missing or holds the wrong type, or the chat is malformed.
        """
        return _Parser(self, row, path, line).parse()


def infer_schema(
    row: Mapping[str, Any],
    *,
    fmt: Format | str | None = None,
    fields: FieldMap | None = None,
    path: str | Path | None = None,
    line: int | None = None,
) -> Schema:
    """Recognise the format of a source from its first row and resolve its columns.

    Args:
        row: The first record of the source.
        fmt: The format, when not to be recognised automatically.
        fields: Column names that differ from the format's defaults.
        path: The source (FLAN's task label comes from its file name; also for error messages).
        line: The row's line or record index, for error messages.

    Returns:
        The schema to parse every row of the source with.

    Raises:
        ValueError: `fmt` names no format, or `fields` maps a role the format does not use.
        DataError: The format cannot be recognised, or the row lacks a column the format needs.
    """
    fields = fields or FieldMap()
    chosen_fmt = Format.parse(fmt) if fmt is not None else _detect(row, fields, path, line)
    usable = set(_COLUMNS[chosen_fmt]) | set(_COMMON)
    if chosen_fmt in _NO_SYSTEM:
        usable.discard("system")
    unusable = [role for role in fields.given() if role not in usable]
    if unusable:
        reads = ", ".join(sorted(usable))
        raise ValueError(f"fields.{unusable[0]} does not apply to the {chosen_fmt.value} format; it reads: {reads}")
    resolved: dict[str, str] = {}
    for role, defaults in {**_COLUMNS[chosen_fmt], **_COMMON}.items():
        if role not in usable:
            continue
        mapped = getattr(fields, role)
        if mapped is not None:
            resolved[role] = mapped
        else:
            resolved[role] = next((name for name in defaults if name in row), defaults[0])
    if chosen_fmt is Format.FLAN_COT:
        for name in _FLAN_COLUMNS:
            if name not in row:
                raise DataError(
                    f"the flan_cot format reads headerless 3-column TSV (question, answer, rationale); "
                    f"found columns {list(row)}",
                    path,
                    line,
                    name,
                )
    for role in _REQUIRED[chosen_fmt]:
        if resolved[role] not in row:
            raise DataError(
                f"missing; the {chosen_fmt.value} format needs a {role} column (found {list(row)})",
                path,
                line,
                resolved[role],
            )
    task = flan_task(path) if chosen_fmt is Format.FLAN_COT and path is not None else None
    return Schema(chosen_fmt, FieldMap(**resolved), task)


def _detect(row: Mapping[str, Any], fields: FieldMap, path: str | Path | None, line: int | None) -> Format:
    """Recognise the format of a row from its keys (and, for pairs, the type of `chosen`)."""

    def column(role: str, defaults: tuple[str, ...]) -> str | None:
        mapped = getattr(fields, role)
        if mapped is not None:
            return mapped if mapped in row else None
        return next((name for name in defaults if name in row), None)

    content_roles = set(fields.given()) - {"id", "task"}
    if not content_roles and list(row) == list(_FLAN_COLUMNS):
        return Format.FLAN_COT
    chosen = column("chosen", ("chosen",))
    if chosen is not None and column("rejected", ("rejected",)) is not None:
        if column("messages", _COLUMNS[Format.SHAREGPT_PAIR]["messages"]) is not None:
            return Format.SHAREGPT_PAIR
        if column("prompt", _COLUMNS[Format.PAIR]["prompt"]) is not None or isinstance(row[chosen], list):
            return Format.PAIR
        if isinstance(row[chosen], str) and "Assistant:" in row[chosen]:
            return Format.HH
    messages = column("messages", ("messages", "conversations"))
    if messages is not None:
        turns = row[messages]
        first = turns[0] if isinstance(turns, list) and turns else None
        is_sharegpt = isinstance(first, dict) and "from" in first if first is not None else messages == "conversations"
        return Format.SHAREGPT if is_sharegpt else Format.MESSAGES
    if not fields.given() and isinstance(row.get("prompt"), list) and isinstance(row.get("completion"), list):
        # TRL's conversational prompt-completion (gradsift select --write-format prompt-completion), whatever
        # original columns (Alpaca's instruction/output, ...) the record kept beside it
        return Format.PROMPT_RESPONSE
    prompt_is_instruction = fields.prompt is None or fields.input is not None
    alpaca = _COLUMNS[Format.ALPACA]
    if prompt_is_instruction and column("prompt", alpaca["prompt"]) and column("response", alpaca["response"]):
        return Format.ALPACA
    plain = _COLUMNS[Format.PROMPT_RESPONSE]
    if column("prompt", plain["prompt"]) and column("response", plain["response"]):
        return Format.PROMPT_RESPONSE
    raise DataError(
        f"cannot recognise the record format from the columns {list(row)}; known formats: {_FORMAT_HELP}. "
        "Pass fmt= and fields= to name the format and columns",
        path,
        line,
    )


class _Parser:
    """Parses one row; holds the row's location so every error can name it."""

    def __init__(self, schema: Schema, row: Mapping[str, Any], path: str | Path | None, line: int | None):
        self.schema = schema
        self.columns = schema.columns
        self.row = row
        self.path = path
        self.line = line

    def error(self, message: str, field_name: str | None) -> DataError:
        return DataError(message, self.path, self.line, field_name)

    def parse(self) -> Parsed:
        fmt = self.schema.fmt
        c = self.columns
        rejected: str | None = None
        rejected_field: str | None = c.rejected
        if fmt is Format.FLAN_COT:
            messages, response_field = self.flan()
        elif fmt is Format.HH:
            messages, rejected = self.hh()
            response_field = str(c.chosen)
        elif fmt.is_pair:
            messages, rejected = self.pair()
            response_field = str(c.chosen)
        else:
            messages, response_field = self.single()
            rejected = self.optional_response(c.rejected)
        if c.system is not None:
            system = self.optional_text(c.system)
            if system:
                if messages[0]["role"] == "system":
                    raise self.error("a system prompt is given both here and as the first turn", c.system)
                messages = [{"role": "system", "content": system}, *messages]
        if not any(m["role"] == "assistant" for m in messages):
            raise self.error("the chat has no assistant turn; expected at least one to train on", response_field)
        task = self.optional_text(c.task) or self.schema.task
        return Parsed(messages, rejected, task, self.record_id(), response_field, rejected_field)

    # Formats -----------------------------------------------------------------------------------------

    def single(self) -> tuple[list[dict[str, str]], str]:
        """alpaca, prompt_response, messages, sharegpt."""
        fmt, c = self.schema.fmt, self.columns
        if fmt in (Format.MESSAGES, Format.SHAREGPT):
            name = str(c.messages)
            turns = self.turns(self.get(name), name)
            last = max((i for i, t in enumerate(turns) if t["role"] == "assistant"), default=None)
            return turns, f"{name}[{last}].content" if last is not None else name
        prompt_name, response_name = str(c.prompt), str(c.response)
        if fmt is Format.ALPACA:
            user = self.text(self.get(prompt_name), prompt_name)
            extra = self.optional_text(c.input)
            prompt = [{"role": "user", "content": f"{user}\n\n{extra}" if extra and extra.strip() else user}]
        else:
            prompt = self.prompt_turns(self.get(prompt_name), prompt_name)
        return [*prompt, {"role": "assistant", "content": self.response(self.get(response_name), response_name)}], (
            response_name
        )

    def flan(self) -> tuple[list[dict[str, str]], str]:
        question, answer, rationale = (self.text(self.get(name), name) for name in _FLAN_COLUMNS)
        # FLAN stores newlines as the two characters `\n` and restores them when reading.
        question, rationale = question.replace("\\n", "\n"), rationale.replace("\\n", "\n")
        response = f"{rationale} So the answer is {answer}.".lstrip()
        return [{"role": "user", "content": question}, {"role": "assistant", "content": response}], _FLAN_COLUMNS[2]

    def pair(self) -> tuple[list[dict[str, str]], str]:
        """pair and sharegpt_pair."""
        c = self.columns
        chosen_name, rejected_name = str(c.chosen), str(c.rejected)
        chosen, rejected = self.get(chosen_name), self.get(rejected_name)
        if isinstance(chosen, list) and any(isinstance(t, dict) and self.role_of(t) != "assistant" for t in chosen):
            # Whole conversations: the prompt is what the two share.
            chosen_turns, rejected_turns = self.turns(chosen, chosen_name), self.turns(rejected, rejected_name)
            for turns, name in ((chosen_turns, chosen_name), (rejected_turns, rejected_name)):
                if turns[-1]["role"] != "assistant":
                    raise self.error("expected the conversation to end with the assistant's response", name)
            if chosen_turns[:-1] != rejected_turns[:-1]:
                raise self.error(
                    f"the {chosen_name} and {rejected_name} conversations must share every turn but the last",
                    rejected_name,
                )
            prompt, prompt_field = chosen_turns[:-1], chosen_name
            chosen_text, rejected_text = chosen_turns[-1]["content"], rejected_turns[-1]["content"]
        else:
            if self.schema.fmt is Format.SHAREGPT_PAIR:
                prompt_field = str(c.messages)
                prompt = self.turns(self.get(prompt_field), prompt_field)
            else:
                prompt_name = str(c.prompt)
                if prompt_name not in self.row:
                    raise self.error(
                        f"missing; expected the prompt here, or {chosen_name}/{rejected_name} as whole conversations",
                        prompt_name,
                    )
                prompt, prompt_field = self.prompt_turns(self.row[prompt_name], prompt_name), prompt_name
            chosen_text = self.response(chosen, chosen_name)
            rejected_text = self.response(rejected, rejected_name)
        if not prompt or prompt[-1]["role"] != "user":
            raise self.error("expected the prompt to end with a user turn", prompt_field)
        return [*prompt, {"role": "assistant", "content": chosen_text}], rejected_text

    def hh(self) -> tuple[list[dict[str, str]], str]:
        c = self.columns
        chosen_name, rejected_name = str(c.chosen), str(c.rejected)
        chosen = self.transcript(self.text(self.get(chosen_name), chosen_name))
        rejected = self.transcript(self.text(self.get(rejected_name), rejected_name))
        cut = os.path.commonprefix([chosen, rejected]).rfind(_HH_ASSISTANT)
        if cut < 0:
            raise self.error(
                f"expected {chosen_name} and {rejected_name} to share a conversation up to an '\\n\\nAssistant:' turn",
                rejected_name,
            )
        parts = _HH_TURN.split(chosen[:cut])
        if parts[0].strip():
            raise self.error("expected the transcript to start with '\\n\\nHuman:'", chosen_name)
        prompt = [
            {"role": "user" if speaker == "Human" else "assistant", "content": text.strip()}
            for speaker, text in zip(parts[1::2], parts[2::2], strict=True)
        ]
        if not prompt or prompt[-1]["role"] != "user":
            raise self.error("expected a Human turn before the last '\\n\\nAssistant:'", chosen_name)
        start = cut + len(_HH_ASSISTANT)
        chosen_text, rejected_text = chosen[start:].strip(), rejected[start:].strip()
        return [*prompt, {"role": "assistant", "content": chosen_text}], rejected_text

    # Values ------------------------------------------------------------------------------------------

    def get(self, name: str) -> Any:
        if name not in self.row:
            raise self.error(f"missing; the {self.schema.fmt.value} format reads this column", name)
        return self.row[name]

    def text(self, value: Any, name: str) -> str:
        if not isinstance(value, str):
            raise self.error(f"expected a string, found {_type_name(value)}", name)
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise self.error("contains an unpaired surrogate, which is not valid Unicode text", name) from None
        return value

    def optional_text(self, name: str | None) -> str | None:
        """A string column that may be absent, null or empty (all read as ``None``)."""
        if name is None or self.row.get(name) in (None, ""):
            return None
        return self.text(self.row[name], name)

    def role_of(self, turn: Mapping[str, Any]) -> Any:
        return turn.get("role", turn.get("from"))

    def turns(self, value: Any, name: str) -> list[dict[str, str]]:
        """Chat turns from a list of ``{"role", "content"}`` or ``{"from", "value"}`` objects."""
        if not isinstance(value, list) or not value:
            raise self.error(f"expected a non-empty list of chat turns, found {_type_name(value)}", name)
        turns = []
        for i, turn in enumerate(value):
            where = f"{name}[{i}]"
            if not isinstance(turn, dict):
                raise self.error(f"expected a chat turn object, found {_type_name(turn)}", where)
            if "role" in turn and "content" in turn:
                role_key, content_key = "role", "content"
            elif "from" in turn and "value" in turn:
                role_key, content_key = "from", "value"
            else:
                raise self.error(
                    f"expected a chat turn with 'role' and 'content' (or ShareGPT 'from' and 'value'), "
                    f"found keys {sorted(map(str, turn))}",
                    where,
                )
            role = turn[role_key]
            if not isinstance(role, str) or role.lower() not in _ROLE_NAMES:
                raise self.error(
                    f"unknown role {role!r}; expected one of {sorted(_ROLE_NAMES)}", f"{where}.{role_key}"
                )
            content = self.text(turn[content_key], f"{where}.{content_key}")
            turns.append({"role": _ROLE_NAMES[role.lower()], "content": content})
        return turns

    def prompt_turns(self, value: Any, name: str) -> list[dict[str, str]]:
        """A prompt given as text (one user turn) or as chat turns."""
        if isinstance(value, list):
            return self.turns(value, name)
        return [{"role": "user", "content": self.text(value, name)}]

    def response(self, value: Any, name: str) -> str:
        """A response given as text, as one assistant turn, or as a list holding one assistant turn."""
        if isinstance(value, str):
            return self.text(value, name)
        if isinstance(value, dict):
            value = [value]
        if isinstance(value, list):
            turns = self.turns(value, name)
            if len(turns) != 1 or turns[0]["role"] != "assistant":
                raise self.error(
                    f"expected one assistant turn as the response, found roles {[t['role'] for t in turns]}", name
                )
            return turns[0]["content"]
        raise self.error(f"expected a string or an assistant turn, found {_type_name(value)}", name)

    def optional_response(self, name: str | None) -> str | None:
        if name is None or self.row.get(name) in (None, ""):
            return None
        return self.response(self.row[name], name)

    def transcript(self, text: str) -> str:
        """An HH transcript, normalised to start with a turn marker."""
        stripped = text.lstrip("\n")
        return "\n\n" + stripped if stripped.startswith(("Human:", "Assistant:")) else text

    def record_id(self) -> str | None:
        name = self.columns.id
        value = self.row.get(name) if name is not None else None
        if value is None or value == "":
            return None
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise self.error(f"expected a string or integer id, found {_type_name(value)}", name)
        return self.text(value, str(name)) if isinstance(value, str) else str(value)


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, list) and not value:
        return "an empty list"
    names = {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
    }
    return names.get(type(value), type(value).__name__)
