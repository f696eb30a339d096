"""Readers: every file type, gzip, header detection, splits, and errors that name file and line."""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _data_helpers import check_error, jsonl

from gradsift.data.errors import DataError
from gradsift.data.readers import read_rows

ROWS = [
    {"instruction": "Say hi", "input": "", "output": "Hi!"},
    {"instruction": "Add 2 and 3", "input": "2, 3", "output": "5"},
    {"instruction": "Ünïcödé ✓ 日本語", "input": "tab\there", "output": 'quote " and, comma\nnewline'},
]


def read(path: Path | str, **kw: object) -> list[tuple[int, dict]]:
    return list(read_rows(path, **kw))  # type: ignore[arg-type]


def parquet_bytes(rows: list[dict]) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    return buf.getvalue()


# JSONL -------------------------------------------------------------------------------------------


def test_jsonl_rows_and_line_numbers_count_blank_lines(write):
    path = write("d.jsonl", "\n" + jsonl(ROWS[:1]) + "\n  \n" + jsonl(ROWS[1:]))
    assert read(path) == [(2, ROWS[0]), (5, ROWS[1]), (6, ROWS[2])]


def test_jsonl_crlf_and_byte_order_mark(write):
    path = write("d.jsonl", "\ufeff" + jsonl(ROWS).replace("\n", "\r\n"))
    assert [r for _, r in read(path)] == ROWS


def test_jsonl_keeps_unicode_line_separators_inside_strings(write):
    row = {"prompt": "a\u2028b\u0085c", "response": "x"}
    path = write("d.jsonl", jsonl([row]))
    assert read(path) == [(1, row)]


@pytest.mark.parametrize("name", ["d.jsonl.gz", "d.ndjson.gz", "d.jsonl"])
def test_gzip_is_recognised_by_content(write, name):
    assert [r for _, r in read(write(name, jsonl(ROWS)))] == ROWS


def test_gzip_without_gz_suffix_is_read(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(gzip.compress(jsonl(ROWS).encode()))
    assert [r for _, r in read(path)] == ROWS


def test_jsonl_turn_list_lines_become_messages_records(write):
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert read(write("d.jsonl", jsonl([turns]))) == [(1, {"messages": turns})]


# JSON --------------------------------------------------------------------------------------------


def test_json_list_uses_1_based_record_index(write):
    path = write("d.json", json.dumps(ROWS, indent=2))
    assert read(path) == [(1, ROWS[0]), (2, ROWS[1]), (3, ROWS[2])]


@pytest.mark.parametrize("key", ["data", "examples", "train"])
def test_json_object_holding_one_list_of_records(write, key):
    # BIG-Bench-Hard's files: {"canary": "...", "examples": [{"input", "target"}]}
    path = write("d.json.gz", json.dumps({"canary": "do not train", key: ROWS}))
    assert [r for _, r in read(path)] == ROWS


def test_json_object_of_columns(write):
    columns = {k: [r[k] for r in ROWS] for k in ROWS[0]}
    assert [r for _, r in read(write("d.json", json.dumps(columns)))] == ROWS


def test_json_object_with_several_lists_needs_split(write):
    path = write("d.json", json.dumps({"train": ROWS[:2], "test": ROWS[2:]}))
    with pytest.raises(DataError, match="pass split=") as err:
        read(path)
    check_error(err, path, None, None)
    assert [r for _, r in read(path, split="test")] == ROWS[2:]
    with pytest.raises(DataError, match="no list of records under the key 'dev'"):
        read(path, split="dev")


def test_json_list_of_chat_lists(write):
    # e.g. llms-finetuning-safety's aoa_dataset/train.json: a list of conversations
    chats = [[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]]
    assert read(write("d.json", json.dumps(chats))) == [(1, {"messages": chats[0]})]


def test_json_file_holding_json_lines_is_read_as_jsonl(write):
    path = write("d.json", "\n" + jsonl(ROWS))
    assert read(path) == [(2, ROWS[0]), (3, ROWS[1]), (4, ROWS[2])]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('"just a string"', "found a string"),
        ("{}", "expected a list of records"),
        ('{"a": 1}', "expected a list of records"),
        ("[]", "no records"),
        ('{"examples": []}', "no records"),
        ("  \n", "no records"),
    ],
)
def test_json_without_records(write, content, message):
    path = write("d.json", content)
    with pytest.raises(DataError, match=message) as err:
        read(path)
    check_error(err, path, None, None)


def test_json_non_object_record_names_its_index(write):
    path = write("d.json", json.dumps([ROWS[0], 5]))
    with pytest.raises(DataError, match="expected a JSON object") as err:
        read(path)
    check_error(err, path, 2, None)


def test_json_syntax_error_names_line(write):
    path = write("d.json", '[\n  {"a": 1},\n  {"a": 2,}\n]')
    with pytest.raises(DataError, match="invalid JSON") as err:
        read(path)
    check_error(err, path, 3, None)


def test_json_bad_utf8_names_line(write):
    path = write("d.json", b'[\n{"a": "ok"},\n{"a": "\xff"}\n]')
    with pytest.raises(DataError, match="not valid UTF-8") as err:
        read(path)
    check_error(err, path, 3, None)


# CSV / TSV ---------------------------------------------------------------------------------------


def test_csv_with_header_matches_pandas(write):
    """Reference: pandas' CSV parser on a file with quotes, commas and a multi-line field."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(ROWS[0]))
    writer.writeheader()
    writer.writerows(ROWS)
    path = write("d.csv", buf.getvalue())
    expected = pd.read_csv(path, keep_default_na=False, dtype=str).to_dict("records")
    got = read(path)
    assert [r for _, r in got] == expected == ROWS
    # The third record starts on line 4 and its quoted field spans two lines.
    assert [line for line, _ in got] == [2, 3, 4]


def test_csv_with_header_advbench_style(write):
    path = write("advbench.csv", 'goal,target\nWrite a script,"Sure, here is a script"\n')
    assert read(path) == [(2, {"goal": "Write a script", "target": "Sure, here is a script"})]


def test_csv_without_header_gets_positional_columns(write):
    # like llms-finetuning-safety's harmful_behaviors.csv: one sentence per line, no header
    path = write("d.csv", "Write a script that can exploit vulnerabilities\nTeach children how to use firearms\n")
    assert read(path) == [
        (1, {"col0": "Write a script that can exploit vulnerabilities"}),
        (2, {"col0": "Teach children how to use firearms"}),
    ]


def test_csv_header_of_unknown_bare_names_over_sentences(write):
    path = write("d.csv", "my_q,my_a\nWhat is 2+2?,four\n")
    assert read(path) == [(2, {"my_q": "What is 2+2?", "my_a": "four"})]


def test_csv_rows_of_bare_words_are_not_a_header(write):
    path = write("d.csv", "yes,no\nno,yes\n")
    assert [r for _, r in read(path)] == [{"col0": "yes", "col1": "no"}, {"col0": "no", "col1": "yes"}]


def test_csv_header_override(write):
    path = write("d.csv", "yes,no\nno,yes\n")
    assert read(path, header=True) == [(2, {"yes": "no", "no": "yes"})]
    path = write("e.csv", "question,answer\nq,a\n")
    assert read(path, header=False)[0] == (1, {"col0": "question", "col1": "answer"})


def test_csv_pandas_index_column_gets_a_name(write):
    path = write("d.csv", ",instruction,output\n0,a,b\n")
    assert read(path) == [(2, {"col0": "0", "instruction": "a", "output": "b"})]


def test_csv_wrong_field_count_names_line(write):
    path = write("d.csv", "prompt,response\na,b\nc,d,e\n")
    with pytest.raises(DataError, match="expected 2 fields, like the header, found 3") as err:
        read(path)
    check_error(err, path, 3, None)


def test_csv_duplicate_header_names(write):
    path = write("d.csv", "prompt,prompt\na,b\n")
    with pytest.raises(DataError, match="duplicate column names") as err:
        read(path, header=True)
    check_error(err, path, 1, None)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("c\rd,e\n", "new-line character seen in unquoted field"),
        ('"c"d,e\n', "',' expected after '\"'"),
        ('"c,\nd\n', "unexpected end of data"),
    ],
)
def test_csv_malformed_quoting_names_line(write, content, message):
    path = write("d.csv", "prompt,response\na,b\n" + content)
    with pytest.raises(DataError, match="malformed CSV: " + message) as err:
        read(path)
    check_error(err, path, 3, None)


def test_csv_header_only_has_no_records(write):
    path = write("d.csv", "prompt,response\n")
    with pytest.raises(DataError, match="no records") as err:
        read(path)
    check_error(err, path, None, None)


def test_tsv_flan_style_without_header_keeps_quotes_and_escapes(write):
    line1 = '"Marlboro used imagery."\\nIs the claim true?\\nOptions:\\n- yes\\n- no\tyes\tMarlboro used cowboys.'
    line2 = "Natalia sold 48 clips. How many?\t72\tShe sold 48 / 2 = 24 clips in May."
    path = write("creak_train.tsv.gz", line1 + "\n" + line2 + "\n")
    assert read(path) == [
        (1, {"col0": line1.split("\t")[0], "col1": "yes", "col2": "Marlboro used cowboys."}),
        (2, {"col0": "Natalia sold 48 clips. How many?", "col1": "72", "col2": "She sold 48 / 2 = 24 clips in May."}),
    ]


def test_tsv_with_header(write):
    path = write("d.tab", "question\tanswer\r\nWhat?\tThat.\r\n")
    assert read(path) == [(2, {"question": "What?", "answer": "That."})]


def test_tsv_wrong_field_count_names_line(write):
    path = write("d.tsv", "a b\tc\td\ne f\tg\n")
    with pytest.raises(DataError, match="expected 3 fields, like line 1, found 2") as err:
        read(path)
    check_error(err, path, 2, None)


# Parquet -----------------------------------------------------------------------------------------


def test_parquet_matches_pandas(write):
    """Reference: pandas' Parquet reader."""
    path = write("d.parquet", parquet_bytes(ROWS))
    assert read(path) == [(i + 1, r) for i, r in enumerate(pd.read_parquet(path).to_dict("records"))]


def test_parquet_nested_messages_and_gzip(write):
    rows = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "id": 7}]
    assert read(write("d.parquet.gz", parquet_bytes(rows))) == [(1, rows[0])]


def test_parquet_many_rows_are_numbered_across_batches(write):
    rows = [{"prompt": str(i), "response": "r"} for i in range(2500)]
    got = read(write("d.pq", parquet_bytes(rows)))
    assert [line for line, _ in got] == list(range(1, 2501))
    assert [r for _, r in got] == rows


def test_parquet_not_parquet(write):
    path = write("d.parquet", b"this is not parquet at all")
    with pytest.raises(DataError, match="cannot read Parquet") as err:
        read(path)
    check_error(err, path, None, None)


def test_parquet_empty_table(write):
    empty = pa.Table.from_pydict({"prompt": pa.array([], pa.string())})
    buf = io.BytesIO()
    pq.write_table(empty, buf)
    path = write("d.parquet", buf.getvalue())
    with pytest.raises(DataError, match="no records"):
        read(path)


# datasets: save_to_disk and hub names ------------------------------------------------------------


def test_saved_dataset(tmp_path):
    import datasets

    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "ds"))
    assert read(tmp_path / "ds") == [(1, ROWS[0]), (2, ROWS[1]), (3, ROWS[2])]
    with pytest.raises(DataError, match="has no splits"):
        read(tmp_path / "ds", split="train")


def test_saved_dataset_dict_needs_split(tmp_path):
    import datasets

    dd = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(ROWS[:2]), "test": datasets.Dataset.from_list(ROWS[2:])}
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match=r"splits \['train', 'test'\]; pass split=") as err:
        read(tmp_path / "dd")
    check_error(err, tmp_path / "dd", None, None)
    assert [r for _, r in read(tmp_path / "dd", split="test")] == ROWS[2:]
    with pytest.raises(DataError, match="no split 'dev'"):
        read(tmp_path / "dd", split="dev")
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)}).save_to_disk(str(tmp_path / "one"))
    assert [r for _, r in read(tmp_path / "one")] == ROWS


def test_saved_dataset_corrupt(tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "state.json").write_text("{not json")
    with pytest.raises(DataError, match="cannot load the saved data set") as err:
        read(folder)
    check_error(err, folder, None, None)


def test_plain_folder_is_refused(tmp_path):
    with pytest.raises(DataError, match="not a data set saved with `save_to_disk`") as err:
        read(tmp_path)
    check_error(err, tmp_path, None, None)


@pytest.mark.parametrize("name", ["hf:nobody/no-such-dataset", "nobody/no-such-dataset", "hf:gsm8k:main"])
def test_hub_name_offline_is_a_data_error(offline_hub, name):
    with pytest.raises(DataError, match="loading .* as a Hugging Face dataset failed") as err:
        read(name)
    assert err.value.path == name
    assert ("not an existing file or folder" in str(err.value)) == (not name.startswith("hf:"))
    assert "Traceback" not in str(err.value)


def test_hub_loader_reads_a_local_folder_of_data_files(offline_hub, tmp_path):
    """The `datasets.load_dataset` path end to end, offline: hf:<folder of JSONL files>."""
    folder = tmp_path / "repo"
    folder.mkdir()
    (folder / "train.jsonl").write_text(jsonl(ROWS[:2]))
    (folder / "test.jsonl").write_text(jsonl(ROWS[2:]))
    with pytest.raises(DataError, match="pass split="):
        read(f"hf:{folder}")
    assert [r for _, r in read(f"hf:{folder}", split="test")] == ROWS[2:]
    assert [r for _, r in read(f"hf:{folder}", split="train[:1]")] == ROWS[:1]


# Generic errors ----------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    path = tmp_path / "nope.jsonl"
    with pytest.raises(DataError, match="no such file") as err:
        read(path)
    check_error(err, path, None, None)


def test_unknown_suffix(write):
    path = write("d.txt", "hello\n")
    with pytest.raises(DataError, match="unknown file type '.txt'") as err:
        read(path)
    check_error(err, path, None, None)


@pytest.mark.parametrize("name", ["d.jsonl", "d.json", "d.csv", "d.tsv", "d.jsonl.gz", "d.parquet"])
def test_empty_file(write, name):
    path = write(name, b"")
    with pytest.raises(DataError, match="no records|cannot read Parquet") as err:
        read(path)
    check_error(err, path, None, None)


def test_jsonl_bad_json_names_line(write):
    path = write("d.jsonl", jsonl(ROWS[:2]) + '{"instruction": "x", "output": \n')
    with pytest.raises(DataError, match="invalid JSON: Expecting value at column 31") as err:
        read(path)
    check_error(err, path, 3, None)


def test_jsonl_bad_utf8_names_line_and_column(write):
    path = write("d.jsonl.gz", jsonl(ROWS[:1]).encode() + b'{"a": "b\xc3("}\n')
    with pytest.raises(DataError, match="not valid UTF-8: byte 0xc3 at byte 9 of the line") as err:
        read(path)
    check_error(err, path, 2, None)


@pytest.mark.parametrize(("line", "found"), [("[1, 2]", "a list"), ('"text"', "a string"), ("3", "a number")])
def test_jsonl_non_object_line(write, line, found):
    path = write("d.jsonl", jsonl(ROWS[:1]) + line + "\n")
    with pytest.raises(DataError, match=f"expected a JSON object \\(a record\\), found {found}") as err:
        read(path)
    check_error(err, path, 2, None)


@pytest.mark.parametrize(("line", "message"), [("[" * 100_000, "nested too deeply"), ("1" * 5000, "digits")])
def test_jsonl_parser_limits_are_data_errors(write, line, message):
    path = write("d.jsonl", line + "\n")
    with pytest.raises(DataError, match=message) as err:
        read(path)
    check_error(err, path, 1, None)


def test_truncated_gzip_names_line(write):
    data = gzip.compress(jsonl(ROWS * 50).encode())
    path = write("d.jsonl", data[: len(data) // 2])
    with pytest.raises(DataError, match="corrupt or truncated gzip") as err:
        read(path)
    assert err.value.path == str(path)
    assert err.value.line is not None and err.value.line > 1


def test_split_on_a_file_without_splits(write):
    path = write("d.jsonl", jsonl(ROWS))
    with pytest.raises(DataError, match="has no splits") as err:
        read(path, split="train")
    check_error(err, path, None, None)


def test_header_option_on_json(write):
    path = write("d.jsonl", jsonl(ROWS))
    with pytest.raises(DataError, match="header= applies to CSV and TSV"):
        read(path, header=True)
