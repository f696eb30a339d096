"""Property tests: whatever bytes, JSON or text come in, readers and loaders give valid records or a DataError.

No other exception type may escape: a user's bad file must produce a message naming the file and
line, never a parser's stack trace.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from _data_helpers import assert_valid_examples, assert_valid_pairs
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from gradsift.data.errors import DataError
from gradsift.data.load import load_examples, load_pairs, write_jsonl
from gradsift.data.readers import read_rows
from gradsift.data.records import Kind

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SUFFIXES = ["d.jsonl", "d.json", "d.csv", "d.tsv", "d.parquet", "d.jsonl.gz", "d.json.gz", "d.csv.gz", "d.tsv.gz"]

# Text with the characters that break parsers: quotes, separators, line breaks of every kind,
# NUL, byte-order marks, combining marks, astral-plane symbols, and unpaired surrogates.
TRICKY = st.sampled_from(list("\"',\t\r\n\\{}[]:\x00\x0b\x0c\x1c\x85\u2028\u2029\ufeff\u0301😀 "))
# `st.characters()` never yields surrogates, and `st.text` drops them from a mixed alphabet; joining
# lists of characters keeps every one.
SURROGATES = st.sampled_from(["\ud800", "\udfff", "\ud83d"])
TEXT = st.one_of(
    st.text(max_size=30),
    st.lists(st.one_of(st.characters(), TRICKY), max_size=30).map("".join),
    st.lists(st.one_of(st.text(max_size=5), SURROGATES), max_size=4).map("".join),
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)
ROLES = st.sampled_from(["user", "assistant", "system", "human", "gpt", "tool", "", None])


def in_tmp(name: str, data: bytes, check: Callable[[Path], None]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
        check(path)


def read_all(path: Path) -> None:
    """Every reader and loader either succeeds with valid records or raises DataError."""
    try:
        rows = list(read_rows(path))
    except DataError as e:
        assert e.path == str(path)
        event("unreadable")
        return
    assert rows and all(isinstance(r, dict) and line >= 1 for line, r in rows)
    for load in (load_sft, load_target, load_pair):
        try:
            load(path)
            event(f"{load.__name__}: valid")
        except DataError as e:
            assert e.path == str(path)
            event(f"{load.__name__}: DataError")


def load_sft(path: Path) -> None:
    assert_valid_examples(load_examples(path))


def load_target(path: Path) -> None:
    examples = load_examples(path, kind=Kind.TARGET, on_invalid="skip")
    assert_valid_examples(examples)


def load_pair(path: Path) -> None:
    assert_valid_pairs(load_pairs(path, on_invalid="skip"))


@SETTINGS
@given(name=st.sampled_from(SUFFIXES), data=st.binary(max_size=300))
@example(name="d.parquet", data=b"PAR1\x00\x00\x00\x00PAR1")
@example(name="d.jsonl.gz", data=b"\x1f\x8b")
@example(name="d.json", data=b"\xef\xbb\xbf[{}]")
def test_random_bytes(name, data):
    in_tmp(name, data, read_all)


@SETTINGS
@given(name=st.sampled_from(["d.jsonl", "d.json", "d.jsonl.gz"]), values=st.lists(JSON, min_size=1, max_size=5))
def test_random_json_values(name, values):
    if name == "d.json":
        data = json.dumps(values).encode("utf-8", "surrogatepass")
    else:
        data = "".join(json.dumps(v) + "\n" for v in values).encode()
    in_tmp(name, data, read_all)


def record_strategy() -> st.SearchStrategy[dict[str, Any]]:
    """Records of every format with random contents: mostly text, sometimes a value of the wrong type."""
    value = st.one_of(TEXT, TEXT, TEXT, JSON)
    turn = st.one_of(
        st.fixed_dictionaries({"role": ROLES, "content": value}),
        st.fixed_dictionaries({"from": ROLES, "value": value}),
        JSON,
    )
    turns = st.lists(turn, max_size=4)
    hh_prefix = st.lists(st.tuples(st.sampled_from(["Human", "Assistant"]), TEXT), max_size=4).map(
        lambda ts: "".join(f"\n\n{s}: {t}" for s, t in ts)
    )
    hh = st.builds(
        lambda prefix, a, b: {"chosen": f"{prefix}\n\nAssistant: {a}", "rejected": f"{prefix}\n\nAssistant: {b}"},
        hh_prefix,
        TEXT,
        TEXT,
    )
    return st.one_of(
        st.fixed_dictionaries({"instruction": value, "output": value}, optional={"input": value, "id": value}),
        st.fixed_dictionaries({"question": value, "answer": value}, optional={"rejected": value, "task": value}),
        st.fixed_dictionaries({"messages": turns}, optional={"system": value, "rejected": value}),
        st.fixed_dictionaries({"conversations": turns}),
        st.fixed_dictionaries(
            {"prompt": st.one_of(value, turns), "chosen": st.one_of(value, turns), "rejected": value}
        ),
        st.fixed_dictionaries({"conversations": turns, "chosen": st.one_of(turn, value), "rejected": turn}),
        hh,
        st.dictionaries(TEXT, value, max_size=4),
    )


@SETTINGS
@given(records=st.lists(record_strategy(), min_size=1, max_size=4), name=st.sampled_from(["d.jsonl", "d.json.gz"]))
def test_random_records_in_every_format(records, name):
    head = records[0]
    same_format = [head] + [r for r in records[1:] if r.keys() == head.keys()]
    text = (
        json.dumps(same_format) if name.startswith("d.json.") else "".join(json.dumps(r) + "\n" for r in same_format)
    )
    in_tmp(name, text.encode("utf-8", "surrogatepass"), read_all)


@SETTINGS
@given(
    cells=st.lists(st.lists(TEXT, min_size=1, max_size=3), min_size=1, max_size=5),
    delimiter=st.sampled_from([",", "\t"]),
)
def test_random_delimited_text(cells, delimiter):
    if delimiter == ",":
        buf = io.StringIO()
        csv.writer(buf).writerows(cells)
        text, name = buf.getvalue(), "d.csv"
    else:
        text, name = "".join("\t".join(row) + "\n" for row in cells), "d.tsv"
    in_tmp(name, text.encode("utf-8", "surrogatepass"), read_all)


@SETTINGS
@given(
    rows=st.lists(st.fixed_dictionaries({"instruction": TEXT, "input": TEXT, "output": TEXT}), min_size=1, max_size=4),
    name=st.sampled_from(["d.jsonl", "d.json", "d.csv", "d.parquet"]),
)
def test_unicode_alpaca_round_trips_or_is_refused(rows, name):
    """Valid-shaped records with any text: loaded exactly as written, or refused with a DataError."""
    if name == "d.jsonl":
        data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    elif name == "d.json":
        data = json.dumps(rows).encode()
    elif name == "d.csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=["instruction", "input", "output"])
        writer.writeheader()
        writer.writerows(rows)
        data = buf.getvalue().encode("utf-8", "surrogatepass")
    else:
        try:
            table = pa.Table.from_pylist(rows)
        except (pa.ArrowException, UnicodeEncodeError):
            return  # Arrow itself refuses to store unpaired surrogates
        buf = io.BytesIO()
        pq.write_table(table, buf)
        data = buf.getvalue()

    def check(path: Path) -> None:
        try:
            examples = load_examples(path)
        except DataError as e:
            assert e.path == str(path)
            event("DataError")
            return
        event("valid")
        assert_valid_examples(examples)
        # JSON spells an unpaired high+low surrogate as an escape pair, which every JSON reader decodes as the
        # one astral character it denotes: what a JSON file holds is what json.loads reads back.
        expected = json.loads(json.dumps(rows)) if name in ("d.jsonl", "d.json") else rows
        assert [e.raw for e in examples] == expected
        for e, r in zip(examples, expected, strict=True):
            assert e.response == r["output"]
            assert e.messages[0]["content"].startswith(r["instruction"])

    in_tmp(name, data, check)


VALID_FILES = {
    "d.jsonl": "".join(
        json.dumps(r) + "\n"
        for r in [
            {"instruction": "Say hi", "input": "", "output": "Hi!"},
            {"instruction": "Add", "input": "2, 3", "output": "5"},
            {"instruction": "Ünïcödé", "input": "", "output": "ok ✓"},
        ]
    ).encode(),
    "d.json": json.dumps({"examples": [{"input": "1+1", "target": "2"}, {"input": "2+2", "target": "4"}]}).encode(),
    "d.csv": b'question,answer\n"What, exactly?","This\nand that"\nWhy?,Because\n',
    "d.tsv": b"Q one?\\nOptions:\tyes\tRationale one.\nQ two?\tno\tRationale two.\n",
    "hh.jsonl": (
        json.dumps({"chosen": "\n\nHuman: Q\n\nAssistant: good", "rejected": "\n\nHuman: Q\n\nAssistant: bad"}) + "\n"
    ).encode()
    * 2,
}


@SETTINGS
@given(name=st.sampled_from(sorted(VALID_FILES)), cut=st.floats(0, 1), gz=st.booleans())
@example(name="d.tsv", cut=1.0, gz=True)
@example(name="d.csv", cut=1.0, gz=False)
@example(name="hh.jsonl", cut=0.5, gz=False)
def test_truncated_files(name, cut, gz):
    """A file cut anywhere (plain, or its gzip stream cut) reads as valid records or a DataError."""
    data = VALID_FILES[name]
    if gz:
        compressed = gzip.compress(data)
        in_tmp(name, compressed[: int(len(compressed) * cut)], read_all)
    else:
        in_tmp(name, data[: int(len(data) * cut)], read_all)


@SETTINGS
@given(rows=st.lists(st.dictionaries(TEXT, JSON, max_size=4), min_size=1, max_size=4), gz=st.booleans())
def test_write_jsonl_round_trips_any_json(rows, gz):
    # As a JSON reader hands them over: a high and a low surrogate side by side become one character.
    rows = json.loads(json.dumps(rows))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / ("r.jsonl.gz" if gz else "r.jsonl")
        write_jsonl(path, rows)
        back = [r for _, r in read_rows(path)]
    # NaN != NaN; compare the JSON texts instead.
    assert json.dumps(back) == json.dumps(rows)


def naive_hh(chosen: str, rejected: str) -> tuple[list[dict[str, str]], str, str]:
    """Reference for well-formed pairs: cut each transcript at its own last Assistant marker."""
    marker = "\n\nAssistant:"
    prompt_text = chosen[: chosen.rfind(marker)]
    assert prompt_text == rejected[: rejected.rfind(marker)]
    turns = []
    for block in prompt_text.split("\n\n")[1:]:
        speaker, _, text = block.partition(":")
        turns.append({"role": "user" if speaker == "Human" else "assistant", "content": text.strip()})
    return (
        turns,
        chosen[chosen.rfind(marker) + len(marker) :].strip(),
        rejected[rejected.rfind(marker) + len(marker) :].strip(),
    )


# Turn text without blank lines or colons, so the naive split above is exact.
# No surrogates: an unpaired one is not valid text and the loader rightly rejects it (tested elsewhere).
PLAIN = st.text(st.characters(exclude_characters="\n:", exclude_categories=("Cs",)), max_size=12)


@SETTINGS
@given(
    exchanges=st.lists(st.tuples(PLAIN, PLAIN), min_size=1, max_size=3),
    question=PLAIN,
    good=PLAIN,
    bad=PLAIN,
)
def test_hh_parsing_matches_a_naive_reference_on_well_formed_pairs(exchanges, question, good, bad):
    prefix = "".join(f"\n\nHuman: {q}\n\nAssistant: {a}" for q, a in exchanges) + f"\n\nHuman: {question}"
    row = {"chosen": f"{prefix}\n\nAssistant: {good}", "rejected": f"{prefix}\n\nAssistant: {bad}"}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "hh.jsonl"
        path.write_text(json.dumps(row) + "\n", encoding="utf-8")
        pair = load_pairs(path)[0]
    assert (pair.prompt, pair.chosen, pair.rejected) == naive_hh(row["chosen"], row["rejected"])
