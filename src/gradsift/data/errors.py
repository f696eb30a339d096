"""Errors for bad input that name the file, line and field."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Bad input data.

    Args:
        message: What is wrong and what was expected.
        path: The file the record came from, if any.
        line: 1-based line (JSONL/CSV) or record index (JSON list, Parquet) of the record.
        field: The field that is missing or malformed.
    """

    def __init__(
        self, message: str, path: str | Path | None = None, line: int | None = None, field: str | None = None
    ):
        self.path = str(path) if path is not None else None
        self.line = line
        self.field = field
        self.reason = message
        where = []
        if self.path is not None:
            where.append(self.path)
        if line is not None:
            where.append(f"line {line}")
        if field is not None:
            where.append(f"field '{field}'")
        prefix = ": ".join([", ".join(where)]) + ": " if where else ""
        super().__init__(prefix + message)
