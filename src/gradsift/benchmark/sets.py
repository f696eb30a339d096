"""A bench's data sets: records read from each source, mixed into a set, written once and read back.

`build_set` mixes a `DataSpec`'s sources (each read, labelled, filtered by length, offset and sampled by
`load_source`, its ids prefixed with the source's name), shuffles them with a seed of the set's name and
splits off the held-out part. A run writes every set as canonical JSONL (`record_row`) and reads it back
(`read_set`), so a first run and a resumed one see identical records.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gradsift.benchmark.dataspec import DataSpec, SetKind, Source
from gradsift.data.load import load_examples, load_pairs, read_mc_items, read_prompts
from gradsift.data.records import Example, Kind, MCItem, Pair

Record = Example | Pair | MCItem
"""A record of any set kind."""


def text_length(r: Record) -> int:
    """Characters of a record's text: what a source's ``max_chars`` limits (prompt and answers of a pair,
    question and choices of a multiple-choice item, messages and any rejected answer of an example)."""
    if isinstance(r, Pair):
        return sum(len(m["content"]) for m in r.prompt) + len(r.chosen) + len(r.rejected)
    if isinstance(r, MCItem):
        return len(r.question) + sum(len(c) for c in r.choices)
    return sum(len(m["content"]) for m in r.messages) + len(r.rejected or "")


def load_source(src: Source, kind: SetKind, seed: int) -> list[Record]:
    """The records one source contributes: read, labelled, filtered by length, offset, sampled, ids prefixed.

    Raises:
        DataError: The source is unreadable or malformed for the set's kind.
        ValueError: Fewer records than `limit` are left.
    """
    records: list[Any]
    if kind == "pair":
        records = load_pairs(src.path, fmt=src.fmt, fields=src.field_map(), split=src.split, on_invalid=src.on_invalid)
    elif kind == "mc":
        records = read_mc_items(src.path, src.split, src.on_invalid)
    elif kind == "prompts":
        records = read_prompts(src.path, src.prompt_field, src.split)
    elif src.response == "rejected":
        pairs = load_pairs(src.path, fmt=src.fmt, fields=src.field_map(), split=src.split, on_invalid=src.on_invalid)
        records = [
            Example(
                id=p.id,
                messages=[*p.prompt, {"role": "assistant", "content": p.rejected}],
                task=p.task,
                raw=p.raw,
                source=p.source,
                line=p.line,
            )
            for p in pairs
            if p.rejected.strip()
        ]
    else:
        records = load_examples(
            src.path,
            kind=Kind.TARGET,
            fmt=src.fmt,
            fields=src.field_map(),
            split=src.split,
            on_invalid=src.on_invalid,
        )
    if src.task is not None:
        for r in records:
            r.task = src.task
    if src.max_chars:
        records = [r for r in records if text_length(r) <= src.max_chars]
    records = records[src.offset :]
    if src.limit:
        if len(records) < src.limit:
            raise ValueError(f"source {src.name}: limit {src.limit} but only {len(records)} records are left")
        if src.take == "random":
            keep = sorted(random.Random(f"{seed}:{src.name}").sample(range(len(records)), src.limit))
            records = [records[i] for i in keep]
        else:
            records = records[: src.limit]
    out: list[Record] = list(records)
    for r in out:
        r.id = f"{src.name}/{r.id}"
    return out


def build_set(spec: DataSpec, name: str, seed: int) -> tuple[list[Record], list[Record]]:
    """Mix a set's sources (shuffled with a seed of the set's name) and split off its held-out part.

    Returns:
        ``(records, heldout)``; `heldout` is empty unless ``spec.holdout``.

    Raises:
        ValueError: Repeated ids, or a holdout that leaves no records.
    """
    records: list[Record] = []
    for src in spec.sources:
        records.extend(load_source(src, spec.kind, seed))
    ids = Counter(r.id for r in records)
    repeated = [i for i, c in ids.items() if c > 1]
    if repeated:
        raise ValueError(f"data set {name}: ids repeat across its records: {repeated[:5]}")
    if spec.shuffle:
        random.Random(f"{seed}:{name}").shuffle(records)
    if spec.limit:
        records = records[: spec.limit]
    if spec.holdout:
        if spec.holdout >= len(records):
            raise ValueError(f"data set {name}: holdout {spec.holdout} leaves none of its {len(records)} records")
        return records[: -spec.holdout], records[-spec.holdout :]
    return records, []


def record_row(r: Record) -> dict[str, Any]:
    """A record as canonical JSON (read back by `read_set`)."""
    if isinstance(r, Pair):
        row: dict[str, Any] = {"id": r.id, "prompt": r.prompt, "chosen": r.chosen, "rejected": r.rejected}
    elif isinstance(r, MCItem):
        row = {"id": r.id, "question": r.question, "choices": r.choices, "answer": r.answer}
    else:
        row = {"id": r.id, "messages": r.messages}
        if r.rejected is not None:
            row["rejected"] = r.rejected
    if r.task is not None:
        row["task"] = r.task
    return row


def read_set(path: Path, kind: SetKind) -> list[Record]:
    """Read a set written by `prepare_data`."""
    if kind == "pair":
        return list(load_pairs(path, fmt="pair"))
    if kind == "mc":
        return list(read_mc_items(path))
    if kind == "prompts":
        return list(read_prompts(path))
    return list(load_examples(path, kind=Kind.TARGET, fmt="messages"))


def fingerprint(records: Sequence[Record]) -> str:
    """Hash of the records' canonical rows, in order (16 hex digits)."""
    h = hashlib.sha256()
    for r in records:
        h.update(json.dumps(record_row(r), sort_keys=True, ensure_ascii=False).encode())
    return h.hexdigest()[:16]


def as_example(r: Record) -> Record:
    """A pair as an example answering its prompt with the chosen response (other records unchanged)."""
    if not isinstance(r, Pair):
        return r
    messages = [*r.prompt, {"role": "assistant", "content": r.chosen}]
    return Example(id=r.id, messages=messages, task=r.task, rejected=r.rejected, source=r.source, line=r.line)
