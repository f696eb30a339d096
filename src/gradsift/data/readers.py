"""Read records from data files, saved `datasets` folders and Hugging Face dataset names.

Every reader yields ``(line, row)`` pairs: ``row`` is the record as a dict, exactly as stored, and
``line`` is where it came from, for error messages:

- JSONL, CSV, TSV: the 1-based physical line the record starts on (blank lines count).
- JSON, Parquet, `datasets` data sets: the 1-based record index.

Sources (see :func:`read_rows`): JSONL (``.jsonl``/``.ndjson``), JSON (``.json``: a list of records,
an object holding one such as BIG-Bench-Hard's ``{"examples": [...]}``, or an object of equal-length
columns; a ``.json`` file that is really JSON Lines is read as such), CSV (``.csv``) and TSV
(``.tsv``/``.tab``) with or without a header row, Parquet (``.parquet``/``.pq``), a folder written by
``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``, and Hugging Face dataset names (``hf:name``,
``hf:name:config``, or an ``owner/name`` that is not an existing path). Gzipped files are recognised
by their magic bytes and read transparently; the format comes from the name without ``.gz``.

Bad input raises :class:`~gradsift.data.errors.DataError` naming the file and line, never a parser's
own exception.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import zlib
from collections.abc import Iterable, Iterator
from enum import StrEnum
from itertools import chain, islice
from pathlib import Path
from typing import Any

from gradsift.data.errors import DataError
from gradsift.data.formats import KNOWN_COLUMNS

Row = dict[str, Any]

_GZIP_MAGIC = b"\x1f\x8b"
# Rows looked at, after the first, to decide whether the first row of a CSV/TSV file is a header.
_HEADER_SAMPLE = 20
# A header cell: a short name made of letters, digits, `_`, `-`, `.` and spaces.
_HEADER_NAME = re.compile(r"[A-Za-z_][\w .\-]{0,63}")
_BARE_NAME = re.compile(r"[A-Za-z_][\w.\-]{0,63}")
# `owner/name` with no data-file suffix: read as a Hugging Face dataset when no such path exists.
_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.\-]*/[\w.\-]+")
# Markers `save_to_disk` writes: `state.json` for a Dataset, `dataset_dict.json` for a DatasetDict.
_SAVED_MARKERS = ("state.json", "dataset_dict.json")


class FileType(StrEnum):
    """File formats :func:`read_rows` reads, keyed by file-name suffix."""

    JSONL = "jsonl"
    JSON = "json"
    CSV = "csv"
    TSV = "tsv"
    PARQUET = "parquet"


_SUFFIXES = {
    ".jsonl": FileType.JSONL,
    ".ndjson": FileType.JSONL,
    ".json": FileType.JSON,
    ".csv": FileType.CSV,
    ".tsv": FileType.TSV,
    ".tab": FileType.TSV,
    ".parquet": FileType.PARQUET,
    ".pq": FileType.PARQUET,
}


def read_rows(
    source: str | Path,
    *,
    split: str | None = None,
    header: bool | None = None,
    skipped: list[DataError] | None = None,
) -> Iterator[tuple[int, Row]]:
    """Yield the records of a data source.

    Args:
        source: A file path, a `save_to_disk` folder, ``hf:name[:config]``, or an ``owner/name``
            Hugging Face dataset name that is not an existing path.
        split: Which part of a source with named parts to read: a split of a `DatasetDict` or a
            Hugging Face dataset (any `datasets` split expression such as ``"train[:100]"``), or a
            key of a JSON object holding several lists of records. Sources with one part need none.
        header: CSV/TSV only: whether the first row names the columns. ``None`` decides from the
            first rows (a header is a row of short, unique, name-like cells, at least one of them a
            column name gradsift knows or, failing that, none of them containing spaces while the
            data below does). Headerless rows get the columns ``col0, col1, ...``.
        skipped: When given, a malformed line of a JSON Lines, CSV or TSV file (invalid JSON, not a record, a
            wrong number of fields) is appended here and skipped instead of raised. Bytes that are not UTF-8
            always raise: they say the whole file is in another encoding.

    Yields:
        ``(line, row)``: the 1-based line (JSONL, CSV, TSV) or record index (JSON, Parquet,
        `datasets`) and the record.

    Raises:
        DataError: The source is missing, unreadable, empty or malformed; the message names the file
            and line.
    """
    text = str(source)
    if text.startswith("hf:"):
        yield from _read_hub(text[3:], split, text, explicit=True)
        return
    path = Path(source)
    if path.is_dir():
        if not any((path / marker).is_file() for marker in _SAVED_MARKERS):
            raise DataError(
                "is a folder but not a data set saved with `save_to_disk` (no state.json or dataset_dict.json); "
                f"pass a data file, or hf:{text} to load a folder of data files with the `datasets` library",
                path,
            )
        yield from _read_saved(path, split)
        return
    if not path.exists():
        if _HUB_NAME.fullmatch(text) and _file_type(path) is None:
            yield from _read_hub(text, split, text, explicit=False)
            return
        raise DataError("no such file or folder", path)
    file_type = _file_type(path)
    if file_type is None:
        known = ", ".join(sorted(_SUFFIXES))
        raise DataError(f"unknown file type {path.suffix!r}; expected one of {known} (optionally + .gz)", path)
    if split is not None and file_type is not FileType.JSON:
        raise DataError(f"split={split!r} given, but a {file_type.value} file has no splits", path)
    if header is not None and file_type not in (FileType.CSV, FileType.TSV):
        raise DataError(f"header= applies to CSV and TSV files, not to a {file_type.value} file", path)
    if file_type is FileType.JSONL:
        rows = _read_jsonl(_lines(path), path, skipped)
    elif file_type is FileType.JSON:
        rows = _read_json(path, split)
    elif file_type is FileType.PARQUET:
        rows = _read_parquet(path)
    else:
        rows = _read_delimited(path, file_type, header, skipped)
    empty = True
    for item in rows:
        empty = False
        yield item
    if empty:
        raise DataError("no records found", path)


def _file_type(path: Path) -> FileType | None:
    """The format named by the suffix, looking through a trailing `.gz`."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return _SUFFIXES.get(suffixes[-1]) if suffixes else None


def _is_gzip(path: Path) -> bool:
    try:
        with open(path, "rb") as probe:
            return probe.read(2) == _GZIP_MAGIC
    except OSError as e:
        raise DataError(f"cannot open: {e.strerror or e}", path) from None


def _open(path: Path) -> gzip.GzipFile | io.BufferedReader:
    """Open a file for binary reading, decompressing it when it starts with the gzip magic bytes."""
    try:
        return gzip.open(path, "rb") if _is_gzip(path) else open(path, "rb")  # noqa: SIM115 - caller closes it
    except OSError as e:
        raise DataError(f"cannot open: {e.strerror or e}", path) from None


def _read_bytes(path: Path) -> bytes:
    """The whole (decompressed) content of a file."""
    with _open(path) as handle:
        try:
            return handle.read()
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"cannot read (corrupt or truncated gzip data?): {e}", path) from None


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line number, decoded line)``; lines keep their line ending.

    Lines are split on ``\\n`` only, so Unicode line separators inside JSON strings stay intact.
    """
    with _open(path) as handle:
        number = 0
        while True:
            try:
                raw = handle.readline()
            except (OSError, EOFError, zlib.error) as e:
                raise DataError(f"cannot read (corrupt or truncated gzip data?): {e}", path, number + 1) from None
            if not raw:
                return
            number += 1
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(
                    f"not valid UTF-8: byte 0x{raw[e.start]:02x} at byte {e.start + 1} of the line", path, number
                ) from None
            if number == 1:
                text = text.removeprefix("\ufeff")
            yield number, text


def _as_record(value: Any, path: Path, line: int) -> Row:
    """Check that a parsed JSON value is a record.

    A list of chat turns (as in some chat data sets' JSON files) becomes ``{"messages": [...]}``.
    """
    if isinstance(value, dict):
        return value
    if _is_turn_list(value):
        return {"messages": value}
    raise DataError(f"expected a JSON object (a record), found {_json_type(value)}", path, line)


def _is_turn_list(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) > 0
        and all(
            isinstance(t, dict) and ({"role", "content"} <= t.keys() or {"from", "value"} <= t.keys()) for t in value
        )
    )


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def _loads(text: str, path: Path, line: int) -> Any:
    """Parse one JSON Lines line, turning every parser failure into a DataError."""
    try:
        return json.loads(text.rstrip())
    except json.JSONDecodeError as e:
        raise DataError(f"invalid JSON: {e.msg} at column {e.colno}", path, line) from None
    except RecursionError:
        raise DataError("invalid JSON: nested too deeply", path, line) from None
    except ValueError as e:  # e.g. an integer longer than Python's digit limit
        raise DataError(f"invalid JSON: {e}", path, line) from None


def _read_jsonl(
    lines: Iterable[tuple[int, str]], path: Path, skipped: list[DataError] | None = None
) -> Iterator[tuple[int, Row]]:
    for number, text in lines:
        if not text.strip():
            continue
        try:
            record = _as_record(_loads(text, path, number), path, number)
        except DataError as e:
            if skipped is None:
                raise
            skipped.append(e)
            continue
        yield number, record


def _read_json(path: Path, split: str | None) -> Iterator[tuple[int, Row]]:
    data = _read_bytes(path)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"not valid UTF-8: byte 0x{data[e.start]:02x}", path, line) from None
    if not text.strip():
        raise DataError("no records: the file is empty", path)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data" and text.lstrip().startswith("{"):
            # Several top-level objects: JSON Lines under a .json name (what `Dataset.to_json` writes).
            if split is not None:
                raise DataError(f"split={split!r} given, but a JSON Lines file has no splits", path) from None
            yield from _read_jsonl(enumerate(io.StringIO(text), 1), path)
            return
        raise DataError(f"invalid JSON: {e.msg} at column {e.colno}", path, e.lineno) from None
    except RecursionError:
        raise DataError("invalid JSON: nested too deeply", path) from None
    except ValueError as e:
        raise DataError(f"invalid JSON: {e}", path) from None
    for index, item in enumerate(_records_in(value, path, split), 1):
        yield index, _as_record(item, path, index)


def _records_in(value: Any, path: Path, split: str | None) -> list[Any]:
    """The list of records a parsed JSON document holds."""
    if isinstance(value, list):
        if split is not None:
            raise DataError(f"split={split!r} given, but the file holds a single list of records", path)
        return value
    if not isinstance(value, dict):
        raise DataError(f"expected a list of records or an object holding one, found {_json_type(value)}", path)
    lists = {k: v for k, v in value.items() if isinstance(v, list)}
    if split is not None:
        if split not in lists:
            raise DataError(f"no list of records under the key {split!r}; lists found: {sorted(lists)}", path)
        return lists[split]
    if (
        len(value) >= 2
        and len(lists) == len(value)
        and len({len(v) for v in lists.values()}) == 1
        and not all(_holds_records(v) for v in lists.values())
    ):
        # An object of equal-length columns, as `json.dump(dataset.to_dict())` writes.
        names = list(lists)
        return [dict(zip(names, cells, strict=True)) for cells in zip(*lists.values(), strict=True)]
    record_lists = {k: v for k, v in lists.items() if v and _holds_records(v)}
    if len(record_lists) == 1:
        return next(iter(record_lists.values()))
    if len(record_lists) > 1:
        raise DataError(f"holds several lists of records {sorted(record_lists)}; pass split= to choose one", path)
    if len(lists) == 1 and not next(iter(lists.values())):
        return []
    raise DataError(
        'expected a list of records, an object holding one (like {"data": [...]}) '
        "or an object of equal-length column lists",
        path,
    )


def _holds_records(items: list[Any]) -> bool:
    return all(isinstance(x, dict) or _is_turn_list(x) for x in items)


def _read_parquet(path: Path) -> Iterator[tuple[int, Row]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # Parquet needs random access; a gzipped file is decompressed into memory first.
    target: Any = io.BytesIO(_read_bytes(path)) if _is_gzip(path) else path
    try:
        parquet = pq.ParquetFile(target)
        batches = parquet.iter_batches(batch_size=1024)
        index = 0
        for batch in batches:
            for row in batch.to_pylist():
                index += 1
                yield index, row
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"cannot read Parquet: {e}", path) from None


def _read_delimited(
    path: Path, file_type: FileType, header: bool | None, skipped: list[DataError] | None = None
) -> Iterator[tuple[int, Row]]:
    rows = _csv_rows(path) if file_type is FileType.CSV else _tsv_rows(path)
    first = next(rows, None)
    if first is None:
        return
    sample = list(islice(rows, _HEADER_SAMPLE))
    has_header = _looks_like_header(first[1], [cells for _, cells in sample]) if header is None else header
    if has_header:
        names = [cell.strip() or f"col{i}" for i, cell in enumerate(first[1])]
        if len(set(names)) != len(names):
            raise DataError(f"duplicate column names in the header: {names}", path, first[0])
        body: Iterable[tuple[int, list[str]]] = sample
        expected = f"{len(names)} fields, like the header"
    else:
        names = [f"col{i}" for i in range(len(first[1]))]
        body = chain([first], sample)
        expected = f"{len(names)} fields, like line {first[0]}"
    for number, cells in chain(body, rows):
        if len(cells) != len(names):
            error = DataError(f"expected {expected}, found {len(cells)}", path, number)
            if skipped is None:
                raise error
            skipped.append(error)
            continue
        yield number, dict(zip(names, cells, strict=True))


def _csv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """Non-blank CSV records with the line each starts on (quoted fields may span lines)."""
    # strict: a quoted field left open at the end of the file (a truncated file) is an error, not data.
    reader = csv.reader((text for _, text in _lines(path)), strict=True)
    start = 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise DataError(f"malformed CSV: {e}", path, start) from None
        if cells:
            yield start, cells
        start = reader.line_num + 1


def _tsv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """Non-blank TSV lines split on tabs.

    TSV has no quoting (IANA text/tab-separated-values), which is how FLAN's chain-of-thought files are
    written and read: a field starting with ``"`` is text, not a quoted field.
    """
    for number, text in _lines(path):
        text = text.rstrip("\r\n")
        if text.strip():
            yield number, text.split("\t")


def _looks_like_header(first: list[str], sample: list[list[str]]) -> bool:
    names = [cell.strip() for cell in first]
    filled = [n for n in names if n]
    if not filled or len(set(filled)) != len(filled) or not all(_HEADER_NAME.fullmatch(n) for n in filled):
        return False
    if any(n.lower() in KNOWN_COLUMNS for n in filled):
        return True
    if len(filled) != len(names) or not all(_BARE_NAME.fullmatch(n) for n in filled):
        return False
    # Unknown bare names: a header only if the data below does not look like bare names too.
    return any(not _BARE_NAME.fullmatch(cell.strip()) for cells in sample for cell in cells)


def _read_saved(path: Path, split: str | None) -> Iterator[tuple[int, Row]]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as e:  # noqa: BLE001 - `datasets` raises many types; all mean "cannot read this folder"
        raise DataError(f"cannot load the saved data set: {_first_line(e)}", path) from None
    yield from _dataset_rows(loaded, split, path)


def _read_hub(name: str, split: str | None, source: str, *, explicit: bool) -> Iterator[tuple[int, Row]]:
    """Rows of a Hugging Face dataset; `explicit`: named with ``hf:`` rather than guessed from a missing path."""
    import datasets

    repo, _, config = name.partition(":")
    if not repo:
        raise DataError("expected hf:<name> or hf:<name>:<config>", source)
    try:
        loaded = datasets.load_dataset(repo, config or None, split=split)
    except Exception as e:  # noqa: BLE001 - hub, network and builder errors all mean "cannot load this name"
        guessed = "" if explicit else "not an existing file or folder, and "
        raise DataError(
            f"{guessed}loading {repo!r} as a Hugging Face dataset failed ({type(e).__name__}: {_first_line(e)}); "
            "without network access, download the data and pass its path",
            source,
        ) from None
    yield from _dataset_rows(loaded, None, source)


def _dataset_rows(loaded: Any, split: str | None, source: str | Path) -> Iterator[tuple[int, Row]]:
    """Rows of a `datasets.Dataset`, or of one split of a `DatasetDict`."""
    import datasets

    if isinstance(loaded, datasets.DatasetDict):
        splits = list(loaded)
        if split is None:
            if len(splits) != 1:
                raise DataError(f"holds the splits {splits}; pass split= to choose one", source)
            split = splits[0]
        if split not in loaded:
            raise DataError(f"no split {split!r}; splits: {splits}", source)
        loaded = loaded[split]
    elif split is not None:
        raise DataError(f"split={split!r} given, but the data set has no splits", source)
    if len(loaded) == 0:
        raise DataError("no records: the data set is empty", source)
    for index, row in enumerate(loaded, 1):
        yield index, dict(row)


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
