"""Load candidate pools, target sets, preference pairs, multiple-choice items and prompts as canonical records;
write JSONL atomically.

Ids: a record's own ``id`` column when it has one (strings, or integers written as strings), else the
:func:`~gradsift.data.records.content_id` of its canonical content (turns and rejected response; not
the task label, so relabelling keeps ids). Exact repeats of an earlier record, which public pools
contain (LLaMA-Factory's Alpaca demo has 14), are kept as separate examples with ids
``<hash>-2``, ``<hash>-3``, ... in file order (gradsift's choice: ids stay stable for a given file and
no record is dropped silently). Two records with the same explicit id are an error.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

from gradsift.atomic import write_bytes_atomic
from gradsift.data.errors import DataError
from gradsift.data.formats import FieldMap, Format, Parsed, Schema, infer_schema
from gradsift.data.readers import read_rows
from gradsift.data.records import Example, Kind, MCItem, Pair, content_id

logger = logging.getLogger(__name__)


OnInvalid = Literal["raise", "skip"]
# Skipped records whose reasons are logged.
_LOGGED_SKIPS = 5

PROMPT_COLUMNS = ("prompt", "goal", "question", "instruction", "query", "input")
"""Columns tried, in order, for the prompt of a prompt-only record (`read_prompts`)."""


def load_examples(
    source: str | Path,
    *,
    kind: Kind | str = Kind.SFT,
    fmt: Format | str | None = None,
    fields: FieldMap | None = None,
    split: str | None = None,
    task: str | None = None,
    header: bool | None = None,
    on_invalid: OnInvalid = "raise",
) -> list[Example]:
    """Load SFT candidates or target examples.

    Any format may be read, preference pairs included (the chosen response becomes the assistant
    turn).

    Args:
        source: File, saved `datasets` folder or Hugging Face name (see :func:`read_rows`).
        kind: ``Kind.SFT`` for a candidate pool, ``Kind.TARGET`` for a target set. Only targets keep
            the `rejected` response (PRISM's ``y-``).
        fmt: Record format; recognised from the first record when ``None``.
        fields: Column names that differ from the format's defaults.
        split: Part of a source with named parts (see :func:`read_rows`).
        task: Task label for every example, replacing any task column.
        header: CSV/TSV: whether the first row is a header (``None``: detect).
        on_invalid: ``"raise"`` on the first malformed record, or ``"skip"`` malformed records with a
            logged warning (public pools have a few, e.g. empty Alpaca outputs), malformed lines of JSON
            Lines, CSV and TSV files too. Unreadable files, undecodable lines and duplicate ids always raise.

    Returns:
        The examples in source order.

    Raises:
        ValueError: `kind` is ``Kind.PAIR`` (use :func:`load_pairs`), or `fmt`/`fields`/`on_invalid`
            are invalid.
        DataError: The source is unreadable or empty, or a record is malformed: a missing column, a
            value of the wrong type, an empty response, a chat with no assistant turn, a duplicate id.
    """
    kind = Kind(kind)
    if kind is Kind.PAIR:
        raise ValueError("load_examples reads SFT candidates and targets; use load_pairs for preference pairs")

    def check(record: Parsed, line: int) -> None:
        response = next(m["content"] for m in reversed(record.messages) if m["role"] == "assistant")
        if not response.strip():
            raise DataError("empty response; expected the text to train on", source, line, record.response_field)

    loaded = _load(source, fmt, fields, split, header, on_invalid, check)
    n_pairs = sum(record.rejected is not None for *_, record in loaded)
    if kind is Kind.SFT and n_pairs:
        logger.warning(
            "%s: %d of %d records are preference pairs; read as SFT examples, their chosen responses are used and "
            "the rejected ones ignored (kind 'pair', --kind pair, reads them as pairs)",
            source,
            n_pairs,
            len(loaded),
        )
    return [
        Example(
            id=record_id,
            messages=record.messages,
            task=task if task is not None else record.task,
            rejected=record.rejected if kind is Kind.TARGET else None,
            raw=row,
            source=str(source),
            line=line,
        )
        for record_id, line, row, record in loaded
    ]


def load_pairs(
    source: str | Path,
    *,
    fmt: Format | str | None = None,
    fields: FieldMap | None = None,
    split: str | None = None,
    header: bool | None = None,
    on_invalid: OnInvalid = "raise",
) -> list[Pair]:
    """Load preference pairs.

    Besides the pair formats, any single-response format with a `rejected` column is read as pairs
    (the response is the chosen one). Empty responses are allowed: an empty answer is a valid
    preference, and HH-RLHF has such pairs.

    Args:
        source: File, saved `datasets` folder or Hugging Face name (see :func:`read_rows`).
        fmt: Record format; recognised from the first record when ``None``.
        fields: Column names that differ from the format's defaults.
        split: Part of a source with named parts (see :func:`read_rows`).
        header: CSV/TSV: whether the first row is a header (``None``: detect).
        on_invalid: ``"raise"`` or ``"skip"`` malformed records (see :func:`load_examples`).

    Returns:
        The pairs in source order.

    Raises:
        ValueError: `fmt`/`fields`/`on_invalid` are invalid.
        DataError: The source is unreadable or empty, or a record is malformed or has no rejected
            response, or an id repeats.
    """

    def check(record: Parsed, line: int) -> None:
        if record.rejected is None:
            raise DataError(
                "missing; a preference pair needs a rejected response",
                source,
                line,
                record.rejected_field or "rejected",
            )
        if record.messages[-1]["role"] != "assistant":
            raise DataError(
                "expected the conversation to end with the chosen assistant response",
                source,
                line,
                record.response_field,
            )
        if not any(m["role"] == "user" for m in record.messages[:-1]):
            raise DataError("the prompt has no user turn", source, line, record.response_field)

    return [
        Pair(
            id=record_id,
            prompt=record.messages[:-1],
            chosen=record.messages[-1]["content"],
            rejected=str(record.rejected),
            task=record.task,
            raw=row,
            source=str(source),
            line=line,
        )
        for record_id, line, row, record in _load(source, fmt, fields, split, header, on_invalid, check)
    ]


def _load(
    source: str | Path,
    fmt: Format | str | None,
    fields: FieldMap | None,
    split: str | None,
    header: bool | None,
    on_invalid: OnInvalid,
    check: Callable[[Parsed, int], None],
) -> list[tuple[str, int, dict[str, Any], Parsed]]:
    """Read, parse and check every row (schema from the first row); ``(id, line, row, parsed)`` per record."""
    if on_invalid not in get_args(OnInvalid):
        raise ValueError(f"on_invalid must be one of {get_args(OnInvalid)}, got {on_invalid!r}")
    schema: Schema | None = None
    id_field: str | None = None
    kept: list[tuple[int, dict[str, Any], Parsed]] = []
    skipped: list[DataError] = []
    # with "skip", malformed lines (invalid JSON, a wrong number of CSV fields) are skipped like bad records
    for line, row in read_rows(source, split=split, header=header, skipped=skipped if on_invalid == "skip" else None):
        if schema is None:
            schema = infer_schema(row, fmt=fmt, fields=fields, path=source, line=line)
            id_field = schema.columns.id
        try:
            record = schema.parse(row, path=source, line=line)
            check(record, line)
        except DataError as e:
            if on_invalid == "raise":
                raise
            skipped.append(e)
            continue
        kept.append((line, row, record))
    if skipped:
        skipped.sort(key=lambda e: e.line or 0)
        reasons = "; ".join(str(e) for e in skipped[:_LOGGED_SKIPS])
        more = f"; and {len(skipped) - _LOGGED_SKIPS} more" if len(skipped) > _LOGGED_SKIPS else ""
        logger.warning("%s: skipped %d malformed records or lines: %s%s", source, len(skipped), reasons, more)
    if not kept:
        raise DataError(f"no valid records ({len(skipped)} malformed ones skipped)", source)
    ids = _assign_ids([(line, record) for line, _, record in kept], source, id_field)
    return [(record_id, line, row, record) for record_id, (line, row, record) in zip(ids, kept, strict=True)]


def _assign_ids(parsed: Sequence[tuple[int, Parsed]], source: str | Path, id_field: str | None) -> list[str]:
    """Ids in record order (see the module docstring); raises on a repeated id."""
    first_line: dict[str, int] = {}
    repeats: Counter[str] = Counter()
    ids = []
    for line, record in parsed:
        if record.id is not None:
            record_id = record.id
        else:
            base = content_id({"messages": record.messages, "rejected": record.rejected})
            repeats[base] += 1
            record_id = base if repeats[base] == 1 else f"{base}-{repeats[base]}"
        if record_id in first_line:
            raise DataError(
                f"duplicate id {record_id!r}: line {first_line[record_id]} has the same id; ids must be unique",
                source,
                line,
                id_field,
            )
        first_line[record_id] = line
        ids.append(record_id)
    n_repeats = sum(n - 1 for n in repeats.values())
    if n_repeats:
        logger.warning("%s: %d records repeat an earlier record exactly; kept with suffixed ids", source, n_repeats)
    return ids


def read_mc_items(source: str | Path, split: str | None = None, on_invalid: OnInvalid = "raise") -> list[MCItem]:
    """Multiple-choice items (`MCItem.from_record` formats); ids from an ``id`` column or the content.

    Raises:
        DataError: The source is unreadable, a record is malformed (with ``on_invalid="raise"``), or none is valid.
    """
    items: list[MCItem] = []
    for line, row in read_rows(source, split=split):
        rid = str(row["id"]) if row.get("id") is not None else content_id(row)
        try:
            items.append(MCItem.from_record(row, rid, str(source), line))
        except DataError:
            if on_invalid == "raise":
                raise
    if not items:
        raise DataError("no valid multiple-choice records", source)
    return items


def read_prompts(source: str | Path, prompt_field: str | None = None, split: str | None = None) -> list[Example]:
    """Prompts to answer (responses, if any, ignored): a ``.txt`` file with one per line, or records.

    A record's prompt is its chat turns up to the last assistant turn (``messages``/``conversations``
    columns), else the text in `prompt_field` or the first of :data:`PROMPT_COLUMNS` it has.

    Returns:
        Examples holding only the prompt turns (their ``rejected``/``task`` unset).

    Raises:
        DataError: The source is unreadable, has no prompt column, or a prompt is empty.
    """
    path = Path(source)
    if path.suffix == ".txt":
        if not path.is_file():
            raise DataError("no such file", path)
        lines = [(i, t.strip()) for i, t in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)]
        rows: list[tuple[int, dict[str, Any]]] = [(i, {"prompt": t}) for i, t in lines if t]
        if not rows:
            raise DataError("no prompts: the file has no non-empty line", path)
    else:
        rows = list(read_rows(source, split=split))
    prompts: list[Example] = []
    for line, row in rows:
        chat = row.get("messages", row.get("conversations"))
        if prompt_field is None and isinstance(chat, list):
            probe = prompt_turns(chat, source, line)
        else:
            column = prompt_field or next((c for c in PROMPT_COLUMNS if c in row), None)
            if column is None or column not in row:
                wanted = prompt_field or " or ".join(PROMPT_COLUMNS)
                raise DataError(f"no prompt column ({wanted}); found {list(row)}", source, line, prompt_field)
            text = row[column]
            if not isinstance(text, str) or not text.strip():
                raise DataError("the prompt must be non-empty text", source, line, column)
            probe = [{"role": "user", "content": text}]
        rid = str(row["id"]) if row.get("id") is not None else f"{content_id(probe)}-{line}"
        prompts.append(Example(id=rid, messages=probe, raw=row, source=str(source), line=line))
    return prompts


def prompt_turns(chat: list[Any], source: str | Path, line: int) -> list[dict[str, str]]:
    """Prompt turns of a chat given as ``{"role", "content"}`` or ``{"from", "value"}`` turns.

    Returns:
        The turns before the last assistant turn (all turns when there is none), in role/content form.

    Raises:
        DataError: A malformed turn, or no user turn in the prompt.
    """
    roles = {"system": "system", "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant"}
    turns: list[dict[str, str]] = []
    for turn in chat:
        if not isinstance(turn, dict):
            raise DataError("a chat turn must be an object", source, line, "messages")
        role = roles.get(str(turn.get("role", turn.get("from", ""))).lower())
        content = turn.get("content", turn.get("value"))
        if role is None or not isinstance(content, str):
            raise DataError(f"malformed chat turn {turn!r}"[:200], source, line, "messages")
        turns.append({"role": role, "content": content})
    last = max((i for i, t in enumerate(turns) if t["role"] == "assistant"), default=len(turns))
    prompt = turns[:last]
    if not any(t["role"] == "user" for t in prompt):
        raise DataError("the prompt has no user turn", source, line, "messages")
    return prompt


def write_jsonl(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """Write rows as JSON Lines atomically (a temporary file in the same folder, then a rename).

    Rows are serialised before anything touches the disk. A ``.gz`` name writes gzip. Dates and
    times (as Parquet holds them) are written in ISO format.

    Args:
        path: Output file; its folder is created if needed.
        rows: JSON-serialisable mappings.

    Raises:
        TypeError: A value cannot be written as JSON.
    """
    path = Path(path)
    data = b"".join(_json_line(row) for row in rows)
    if path.suffix == ".gz":
        data = gzip.compress(data, mtime=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, data)


def write_records(
    path: str | Path, records: Sequence[Example | Pair], extra_columns: Mapping[str, Sequence[Any]] | None = None
) -> None:
    """Write records in their original form (`raw`), with extra columns, as JSONL (atomically).

    Args:
        path: Output file (``.gz`` writes gzip).
        records: Loaded examples or pairs.
        extra_columns: Column name -> one value per record (e.g. ``{"score": [...]}``); a column of the
            same name in `raw` is replaced.

    Raises:
        ValueError: An extra column's length differs from the number of records.
    """
    extra_columns = extra_columns or {}
    for name, values in extra_columns.items():
        if len(values) != len(records):
            raise ValueError(f"extra column {name!r} has {len(values)} values for {len(records)} records")
    write_jsonl(
        path,
        (
            {**record.raw, **{name: values[i] for name, values in extra_columns.items()}}
            for i, record in enumerate(records)
        ),
    )


def _json_line(row: Mapping[str, Any]) -> bytes:
    text = json.dumps(row, ensure_ascii=False, default=_json_default)
    try:
        return (text + "\n").encode("utf-8")
    except UnicodeEncodeError:
        # Unpaired surrogates cannot be UTF-8; JSON's \\u escapes keep them exactly.
        return (json.dumps(row, default=_json_default) + "\n").encode("ascii")


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    raise TypeError(f"cannot write a {type(value).__name__} as JSON: {value!r}"[:200])
