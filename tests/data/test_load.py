"""Loaders: canonical records with stable ids, validation errors, and atomic JSONL writing."""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _data_helpers import assert_valid_examples, assert_valid_pairs, check_error, jsonl

from gradsift.data.errors import DataError
from gradsift.data.formats import FieldMap
from gradsift.data.load import load_examples, load_pairs, write_jsonl, write_records
from gradsift.data.readers import read_rows
from gradsift.data.records import Example, Kind, content_id

ALPACA = [
    {"instruction": "Say hi", "input": "", "output": "Hi!"},
    {"instruction": "Add", "input": "2, 3", "output": "5"},
    {"instruction": "Ünïcödé 日本語", "input": "", "output": 'a "quoted", comma\nand newline'},
]
HH = [
    {"chosen": "\n\nHuman: Q1\n\nAssistant: good", "rejected": "\n\nHuman: Q1\n\nAssistant: bad"},
    {
        "chosen": "\n\nHuman: Q2\n\nAssistant: A\n\nHuman: Q3\n\nAssistant: yes",
        "rejected": "\n\nHuman: Q2\n\nAssistant: A\n\nHuman: Q3\n\nAssistant: no",
    },
]


def as_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def as_parquet(rows: list[dict]) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    return buf.getvalue()


def test_alpaca_examples(write):
    path = write("pool.jsonl", jsonl(ALPACA))
    examples = load_examples(path)
    assert_valid_examples(examples)
    first = examples[0]
    assert first.messages == [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hi!"}]
    assert first.id == content_id({"messages": first.messages, "rejected": None})
    assert (first.source, first.line, first.task, first.rejected) == (str(path), 1, None, None)
    assert [e.raw for e in examples] == ALPACA
    assert examples[1].messages[0]["content"] == "Add\n\n2, 3"


def test_same_records_load_the_same_from_every_file_type(write, tmp_path):
    """Ids and chats do not depend on the container: JSONL, JSON, gzip, CSV, Parquet, save_to_disk."""
    import datasets

    datasets.Dataset.from_list(ALPACA).save_to_disk(str(tmp_path / "saved"))
    sources = [
        write("a.jsonl", jsonl(ALPACA)),
        write("a.json", json.dumps(ALPACA)),
        write("a.json.gz", json.dumps({"data": ALPACA})),
        write("a.csv", as_csv(ALPACA)),
        write("a.parquet", as_parquet(ALPACA)),
        tmp_path / "saved",
    ]
    loaded = [load_examples(s) for s in sources]
    reference = [(e.id, e.messages, e.raw) for e in loaded[0]]
    for examples in loaded[1:]:
        assert [(e.id, e.messages, e.raw) for e in examples] == reference


def test_explicit_ids_and_integer_ids(write):
    rows = [{"id": "seed_0", "question": "q", "answer": "a"}, {"id": 7, "question": "q2", "answer": "a2"}]
    examples = load_examples(write("d.jsonl", jsonl(rows)))
    assert [e.id for e in examples] == ["seed_0", "7"]
    assert examples[1].raw == rows[1]


def test_ids_do_not_depend_on_task_or_kind(write):
    rows = [{"prompt": "p", "response": "r", "rejected": "x", "task": "t"}]
    path = write("d.jsonl", jsonl(rows))
    sft = load_examples(path)
    target = load_examples(path, kind=Kind.TARGET, task="other")
    pair = load_pairs(path)
    assert sft[0].id == target[0].id == pair[0].id
    assert (sft[0].rejected, target[0].rejected) == (None, "x")
    assert (sft[0].task, target[0].task) == ("t", "other")


def test_target_kind_as_string_and_pair_kind_refused(write):
    path = write("d.jsonl", jsonl(ALPACA))
    assert load_examples(path, kind="target")[0].rejected is None
    with pytest.raises(ValueError, match="use load_pairs"):
        load_examples(path, kind=Kind.PAIR)


def test_flan_tsv_examples_get_the_file_task(write):
    content = "Natalia sold 48 clips.\\nHow many?\t72\tShe sold 24 more.\nWhat is 1+1?\t2\tOne plus one.\n"
    examples = load_examples(write("gsm8k_train.tsv.gz", content))
    assert [e.task for e in examples] == ["gsm8k", "gsm8k"]
    assert examples[0].messages[0]["content"] == "Natalia sold 48 clips.\nHow many?"
    assert examples[0].response == "She sold 24 more. So the answer is 72."
    assert load_examples(write("x_train.tsv", content), task="math")[0].task == "math"


def test_bbh_json_as_targets(write):
    data = {"canary": "BENCHMARK DATA SHOULD NEVER APPEAR", "examples": [{"input": "1 + 1 =", "target": "2"}]}
    examples = load_examples(write("arith.json", json.dumps(data)), kind=Kind.TARGET, task="arith")
    assert examples[0].messages == [{"role": "user", "content": "1 + 1 ="}, {"role": "assistant", "content": "2"}]
    assert examples[0].task == "arith"


def test_pairs_from_hh(write):
    path = write("hh.jsonl.gz", jsonl(HH))
    pairs = load_pairs(path)
    assert_valid_pairs(pairs)
    assert pairs[1].prompt == [
        {"role": "user", "content": "Q2"},
        {"role": "assistant", "content": "A"},
        {"role": "user", "content": "Q3"},
    ]
    assert (pairs[1].chosen, pairs[1].rejected, pairs[1].line, pairs[1].raw) == ("yes", "no", 2, HH[1])


def test_pairs_from_sharegpt_json(write):
    rows = [
        {
            "conversations": [{"from": "human", "value": "Hi"}],
            "chosen": {"from": "gpt", "value": "Hello!"},
            "rejected": {"from": "gpt", "value": "Go away."},
        }
    ]
    pairs = load_pairs(write("dpo.json.gz", json.dumps(rows)))
    assert (pairs[0].prompt, pairs[0].chosen, pairs[0].rejected) == (
        [{"role": "user", "content": "Hi"}],
        "Hello!",
        "Go away.",
    )


def test_pair_file_as_sft_trains_on_chosen(write):
    examples = load_examples(write("hh.jsonl", jsonl(HH)), kind="target")
    assert (examples[0].response, examples[0].rejected) == ("good", "bad")


def test_pairs_allow_empty_responses(write):
    # HH-RLHF's harmless-base test split has four pairs whose chosen reply is empty.
    rows = [{"chosen": "\n\nHuman: Do it\n\nAssistant:", "rejected": "\n\nHuman: Do it\n\nAssistant: Sure."}]
    assert load_pairs(write("hh.jsonl", jsonl(rows)))[0].chosen == ""


def test_pairs_need_a_rejected_response(write):
    path = write(
        "d.jsonl", jsonl([{"prompt": "p", "response": "r", "rejected": "x"}, {"prompt": "p2", "response": "r"}])
    )
    with pytest.raises(DataError, match="a preference pair needs a rejected response") as err:
        load_pairs(path)
    check_error(err, path, 2, "rejected")


def test_pairs_need_the_chat_to_end_with_the_response(write):
    rows = [
        {
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "a"},
                {"role": "user", "content": "more"},
            ],
            "rejected": "x",
        }
    ]
    path = write("d.jsonl", jsonl(rows))
    with pytest.raises(DataError, match="end with the chosen assistant response") as err:
        load_pairs(path)
    check_error(err, path, 1, "messages[1].content")


# Validation errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rows", "line", "field", "message"),
    [
        ([ALPACA[0], {"instruction": "i"}], 2, "output", "missing"),
        (
            [ALPACA[0], ALPACA[1], {"instruction": "i", "output": 5}],
            3,
            "output",
            "expected a string or an assistant turn",
        ),
        ([ALPACA[0], {"instruction": "i", "output": "  \n"}], 2, "output", "empty response"),
        (
            [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]}],
            1,
            "messages[1].content",
            "empty response",
        ),
        ([{"messages": [{"role": "user", "content": "q"}]}], 1, "messages", "no assistant turn"),
        (
            [{"messages": [{"role": "user", "content": 1}, {"role": "assistant", "content": "a"}]}],
            1,
            "messages[0].content",
            "expected a string",
        ),
    ],
)
def test_record_errors_name_file_line_and_field(write, rows, line, field, message):
    path = write("d.jsonl", jsonl(rows))
    with pytest.raises(DataError, match=message) as err:
        load_examples(path)
    check_error(err, path, line, field)


def test_csv_error_lines_are_physical_lines(write):
    path = write("d.csv", 'prompt,response\n"multi\nline",ok\nq,\n')
    with pytest.raises(DataError, match="empty response") as err:
        load_examples(path)
    check_error(err, path, 4, "response")


def test_duplicate_explicit_ids_name_both_lines(write):
    rows = [
        {"id": "a", "prompt": "p1", "response": "r"},
        {"id": "b", "prompt": "p2", "response": "r"},
        {"id": "a", "prompt": "p3", "response": "r"},
    ]
    path = write("d.jsonl", jsonl(rows))
    with pytest.raises(DataError, match="duplicate id 'a': line 1 has the same id") as err:
        load_examples(path)
    check_error(err, path, 3, "id")


def test_exact_repeats_get_suffixed_ids(write, caplog):
    rows = [ALPACA[0], ALPACA[1], ALPACA[0], ALPACA[0]]
    with caplog.at_level(logging.WARNING, logger="gradsift.data.load"):
        examples = load_examples(write("d.jsonl", jsonl(rows)))
    base = examples[0].id
    assert [e.id for e in examples] == [base, examples[1].id, f"{base}-2", f"{base}-3"]
    assert "2 records repeat an earlier record exactly" in caplog.text


def test_empty_data_set(write):
    path = write("d.jsonl", "\n\n")
    with pytest.raises(DataError, match="no records") as err:
        load_examples(path)
    check_error(err, path, None, None)


def test_unrecognised_format_names_the_first_line(write):
    path = write("d.jsonl", "\n" + jsonl([{"id": "koala_0", "prompt": "p"}]))
    with pytest.raises(DataError, match="cannot recognise the record format") as err:
        load_examples(path)
    check_error(err, path, 2, None)


def test_skip_invalid_records(write, caplog):
    rows = [ALPACA[0], {"instruction": "i", "output": ""}, {"instruction": "i"}, ALPACA[1]]
    path = write("d.jsonl", jsonl(rows))
    with caplog.at_level(logging.WARNING, logger="gradsift.data.load"):
        examples = load_examples(path, on_invalid="skip")
    assert [e.line for e in examples] == [1, 4]
    assert "skipped 2 malformed records" in caplog.text and "line 2" in caplog.text and "line 3" in caplog.text
    with pytest.raises(DataError, match=r"no valid records \(1 malformed ones skipped\)"):
        load_examples(write("e.jsonl", jsonl(rows[1:2])), on_invalid="skip")
    with pytest.raises(ValueError, match="on_invalid must be one of"):
        load_examples(path, on_invalid="ignore")  # type: ignore[arg-type]


def test_skip_skips_malformed_lines_but_not_undecodable_ones(write, caplog):
    path = write("d.jsonl", jsonl(ALPACA[:1]) + "{oops\n" + "[1, 2]\n" + jsonl(ALPACA[1:2]))
    with pytest.raises(DataError, match="invalid JSON") as err:
        load_examples(path)
    check_error(err, path, 2, None)
    with caplog.at_level(logging.WARNING):
        examples = load_examples(path, on_invalid="skip")
    assert [e.line for e in examples] == [1, 4]
    assert "skipped 2 malformed records or lines" in caplog.text
    assert "line 2: invalid JSON" in caplog.text and "line 3: expected a JSON object" in caplog.text
    table = write("d.csv", "instruction,output\nq1,a1\nq2,a2,extra\nq3,a3\n")
    assert [e.line for e in load_examples(table, on_invalid="skip")] == [2, 4]
    # bytes that are not UTF-8 say the whole file is in another encoding: never skipped line by line
    binary = write("b.jsonl", "")
    binary.write_bytes(jsonl(ALPACA[:1]).encode() + b'{"instruction": "\xff"}\n')
    with pytest.raises(DataError, match="not valid UTF-8"):
        load_examples(binary, on_invalid="skip")


def test_field_map_and_format_override(write):
    rows = [{"q": "Why?", "a": "Because.", "label": "why"}]
    path = write("d.csv", as_csv(rows))
    examples = load_examples(path, fields=FieldMap(prompt="q", response="a", task="label"))
    assert (examples[0].messages[0]["content"], examples[0].response, examples[0].task) == ("Why?", "Because.", "why")
    examples = load_examples(
        write("h.csv", "Why?,Because.\n"),
        fmt="prompt_response",
        fields=FieldMap(prompt="col0", response="col1"),
        header=False,
    )
    assert examples[0].response == "Because."


def test_hub_name_offline(offline_hub):
    with pytest.raises(DataError, match="Hugging Face dataset failed"):
        load_examples("hf:nobody/nothing")


# Writing -----------------------------------------------------------------------------------------


def test_write_jsonl_round_trip_and_gzip(tmp_path):
    rows = [{"a": 1, "b": "日本語 ✓"}, {"a": None, "nested": {"x": [1, 2]}}]
    write_jsonl(tmp_path / "out" / "r.jsonl", rows)
    assert (tmp_path / "out" / "r.jsonl").read_text(encoding="utf-8").splitlines()[0] == '{"a": 1, "b": "日本語 ✓"}'
    assert [r for _, r in read_rows(tmp_path / "out" / "r.jsonl")] == rows
    write_jsonl(tmp_path / "r.jsonl.gz", rows)
    assert gzip.decompress((tmp_path / "r.jsonl.gz").read_bytes()).decode().count("\n") == 2
    assert [r for _, r in read_rows(tmp_path / "r.jsonl.gz")] == rows


def test_write_jsonl_keeps_unpaired_surrogates_exactly(tmp_path):
    rows = [{"text": "bad \ud800 surrogate", "ok": "fine ✓"}]
    write_jsonl(tmp_path / "r.jsonl", rows)
    assert [r for _, r in read_rows(tmp_path / "r.jsonl")] == rows


def test_write_jsonl_dates(tmp_path):
    import datetime as dt

    write_jsonl(tmp_path / "r.jsonl", [{"when": dt.date(2024, 1, 2)}])
    assert json.loads((tmp_path / "r.jsonl").read_text()) == {"when": "2024-01-02"}


def test_write_jsonl_is_atomic(tmp_path):
    """A row that cannot be written leaves the old file untouched and no temporary file behind."""
    path = tmp_path / "r.jsonl"
    write_jsonl(path, [{"v": 1}])
    with pytest.raises(TypeError, match="cannot write a object as JSON"):
        write_jsonl(path, [{"v": 2}, {"v": object()}])
    assert path.read_text() == '{"v": 1}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.jsonl"]


def test_write_records_raw_plus_extra_columns(write, tmp_path):
    examples = load_examples(write("pool.json", json.dumps(ALPACA)))
    out = tmp_path / "selected.jsonl"
    write_records(out, examples[::-1], {"score": [0.5, 0.25, 1.0], "output": ["x", "y", "z"]})
    rows = [r for _, r in read_rows(out)]
    assert rows == [
        {**ALPACA[2], "score": 0.5, "output": "x"},
        {**ALPACA[1], "score": 0.25, "output": "y"},
        {**ALPACA[0], "score": 1.0, "output": "z"},
    ]
    assert examples[0].raw == ALPACA[0]  # the records themselves are unchanged


def test_write_records_pairs_round_trip(write, tmp_path):
    pairs = load_pairs(write("hh.jsonl", jsonl(HH)))
    write_records(tmp_path / "p.jsonl", pairs)
    assert [p.id for p in load_pairs(tmp_path / "p.jsonl")] == [p.id for p in pairs]


def test_write_records_column_length_mismatch(tmp_path):
    records = [Example(id="a", messages=[{"role": "assistant", "content": "x"}], raw={"k": 1})]
    with pytest.raises(ValueError, match="extra column 'score' has 2 values for 1 records"):
        write_records(tmp_path / "r.jsonl", records, {"score": [1, 2]})
    assert not (tmp_path / "r.jsonl").exists()


def test_load_path_objects_and_strings_agree(write):
    path = write("d.jsonl", jsonl(ALPACA))
    assert [e.id for e in load_examples(str(path))] == [e.id for e in load_examples(Path(path))]
