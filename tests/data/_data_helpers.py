"""Plain helpers shared by the data tests (fixtures live in conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gradsift.data.errors import DataError
from gradsift.data.records import ROLES, Example, Pair


def jsonl(rows: list[Any]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def check_error(err: pytest.ExceptionInfo[DataError], path: Path | str, line: int | None, field: str | None) -> None:
    """The error names the file, line and field, in its attributes and its message."""
    e = err.value
    assert e.path == str(path)
    assert e.line == line
    assert e.field == field
    text = str(e)
    assert str(path) in text
    if line is not None:
        assert f"line {line}" in text
    if field is not None:
        assert f"field '{field}'" in text


def assert_valid_examples(examples: list[Example]) -> None:
    """What every loaded example promises: chat turns of known roles, an assistant reply, unique ids."""
    assert examples
    assert len({e.id for e in examples}) == len(examples)
    for e in examples:
        assert isinstance(e.id, str) and e.id
        assert e.line >= 1
        assert isinstance(e.raw, dict)
        for m in e.messages:
            assert set(m) == {"role", "content"}
            assert m["role"] in ROLES
            assert isinstance(m["content"], str)
            m["content"].encode("utf-8")
        assert e.response.strip()
        assert e.rejected is None or isinstance(e.rejected, str)


def assert_valid_pairs(pairs: list[Pair]) -> None:
    assert pairs
    assert len({p.id for p in pairs}) == len(pairs)
    for p in pairs:
        assert p.prompt and any(m["role"] == "user" for m in p.prompt)
        assert all(m["role"] in ROLES and isinstance(m["content"], str) for m in p.prompt)
        assert isinstance(p.chosen, str) and isinstance(p.rejected, str)
        p.chosen.encode("utf-8")
        p.rejected.encode("utf-8")
