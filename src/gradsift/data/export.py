"""Selected records as JSONL rows: as they were read, or in the conversational formats TRL's trainers read as is.

`WriteFormat`:

- ``original``: each record's own fields (`Example.raw`, `Pair.raw`), e.g. Alpaca ``instruction/input/output``
  or an HH transcript, as gradsift read it.
- ``messages``: examples as ``{"messages": [...]}``, the whole chat (system, user and assistant turns), which
  TRL's `SFTTrainer` reads as a conversational language-modelling set. Pairs as TRL's implicit-prompt
  preference rows: ``chosen`` and ``rejected`` each the whole chat ending in that response.
- ``prompt-completion``: examples as ``{"prompt": [...turns before the last assistant turn], "completion":
  [that assistant turn]}`` (TRL's conversational prompt-completion: the loss covers the completion only).
  Pairs as ``{"prompt": [...], "chosen": [assistant turn], "rejected": [assistant turn]}``, TRL's explicit-prompt
  preference rows, which `DPOTrainer` reads.

The chats are gradsift's canonical ones (the same turns its scores were computed on); TRL applies the model's
chat template to them. In the TRL formats the record's original fields follow under their own names, except
those TRL's trainers read (`TRL_COLUMNS`): a kept ``prompt`` string or ``rejected`` field would change what the
trainer sees (TRL detects a set's type from such columns), so those are dropped; the chat written holds their
content. The extra columns (``gradsift_id``, ``gradsift_score``, ...) come last and replace fields of the same
name.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

from gradsift.data.load import write_jsonl
from gradsift.data.records import Example, Pair


class WriteFormat(StrEnum):
    """How selected records are written (module docstring)."""

    ORIGINAL = "original"
    MESSAGES = "messages"
    PROMPT_COMPLETION = "prompt-completion"

    @classmethod
    def parse(cls, value: WriteFormat | str) -> WriteFormat:
        """The format named by `value`.

        Raises:
            ValueError: `value` names no format.
        """
        try:
            return cls(value)
        except ValueError:
            names = ", ".join(f.value for f in cls)
            raise ValueError(f"unknown write format {value!r}; choose from {names}") from None


TRL_COLUMNS = frozenset(
    {
        "text",
        "messages",
        "conversations",
        "prompt",
        "completion",
        "chosen",
        "rejected",
        "label",
        "tools",
        "chat_template_kwargs",
        "images",
        "image",
        "input_ids",
        "attention_mask",
        "labels",
        "completion_mask",
        "assistant_masks",
        "prompt_ids",
        "chosen_ids",
        "rejected_ids",
    }
)
"""Columns TRL's SFT and DPO trainers read (data, tokenised data, template inputs): never copied from a record
into a TRL format."""


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def trl_fields(record: Example | Pair, fmt: WriteFormat) -> dict[str, Any]:
    """The TRL fields of one record in `fmt` (``messages`` or ``prompt-completion``; module docstring).

    Raises:
        ValueError: `fmt` is ``original``, which has no TRL fields.
    """
    if fmt is WriteFormat.ORIGINAL:
        raise ValueError("the original format writes the record's own fields, not TRL's")
    if isinstance(record, Pair):
        prompt = [dict(m) for m in record.prompt]
        if fmt is WriteFormat.MESSAGES:
            return {"chosen": prompt + _assistant(record.chosen), "rejected": prompt + _assistant(record.rejected)}
        return {"prompt": prompt, "chosen": _assistant(record.chosen), "rejected": _assistant(record.rejected)}
    if fmt is WriteFormat.MESSAGES:
        return {"messages": [dict(m) for m in record.messages]}
    return {"prompt": [dict(m) for m in record.prompt_messages], "completion": _assistant(record.response)}


def export_rows(
    records: Sequence[Example | Pair], fmt: WriteFormat | str, extra_columns: Mapping[str, Sequence[Any]] | None = None
) -> Iterator[dict[str, Any]]:
    """The rows `write_selection` writes: in a TRL format, its fields, then the record's other original fields,
    then the extra columns.

    Raises:
        ValueError: An unknown format, or an extra column whose length differs from the number of records.
    """
    fmt = WriteFormat.parse(fmt)
    extra_columns = extra_columns or {}
    for name, values in extra_columns.items():
        if len(values) != len(records):
            raise ValueError(f"extra column {name!r} has {len(values)} values for {len(records)} records")
    for i, record in enumerate(records):
        extra = {name: values[i] for name, values in extra_columns.items()}
        if fmt is WriteFormat.ORIGINAL:
            yield {**record.raw, **extra}
            continue
        kept = {k: v for k, v in record.raw.items() if k not in TRL_COLUMNS}
        yield {**trl_fields(record, fmt), **kept, **extra}


def write_selection(
    path: str | Path,
    records: Sequence[Example | Pair],
    fmt: WriteFormat | str = WriteFormat.ORIGINAL,
    extra_columns: Mapping[str, Sequence[Any]] | None = None,
) -> None:
    """Write records as JSONL in `fmt` (module docstring), atomically.

    Args:
        path: Output file (``.gz`` writes gzip).
        records: Loaded examples or pairs.
        fmt: ``original``, ``messages`` or ``prompt-completion``.
        extra_columns: Column name -> one value per record, written last.

    Raises:
        ValueError: An unknown format, or an extra column of the wrong length.
    """
    write_jsonl(path, export_rows(records, fmt, extra_columns))
