"""Selected records written as read, or in TRL's conversational formats, from every reader format."""

from __future__ import annotations

import gzip
import json

import pytest

from gradsift.data.export import TRL_COLUMNS, WriteFormat, export_rows, write_selection
from gradsift.data.load import load_examples, load_pairs
from gradsift.data.records import Kind

SFT_ROWS = {
    "alpaca": {"instruction": "Add 2 and 3.", "input": "", "output": "5", "task": "arithmetic", "noisy": False},
    "prompt_response": {"prompt": "Capital of France?", "response": "Paris", "rejected": "Lyon"},
    "messages": {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Bye"},
            {"role": "assistant", "content": "Goodbye"},
        ],
        "source_url": "x",
    },
    "sharegpt": {"conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}], "lang": "en"},
}
PAIR_ROWS = {
    "pair": {"prompt": "Say hi", "chosen": "Hi!", "rejected": "No.", "score_chosen": 9},
    "hh": {"chosen": "\n\nHuman: Help me\n\nAssistant: Sure.", "rejected": "\n\nHuman: Help me\n\nAssistant: No."},
}


def _load(tmp_path, name, row, kind):
    path = tmp_path / f"{name}.jsonl"
    path.write_text(json.dumps(row) + "\n")
    return load_pairs(str(path)) if kind == "pair" else load_examples(str(path), kind=Kind.SFT)


@pytest.mark.parametrize("name", list(SFT_ROWS))
def test_sft_formats(tmp_path, name):
    (ex,) = _load(tmp_path, name, SFT_ROWS[name], "sft")
    extra = {"gradsift_id": [ex.id], "gradsift_score": [0.5]}
    original = next(export_rows([ex], "original", extra))
    assert original == {**SFT_ROWS[name], **{k: v[0] for k, v in extra.items()}}

    messages = next(export_rows([ex], "messages", extra))
    assert messages["messages"] == ex.messages and messages["messages"][-1]["role"] == "assistant"
    pc = next(export_rows([ex], "prompt-completion", extra))
    assert pc["prompt"] == ex.prompt_messages and pc["completion"] == [{"role": "assistant", "content": ex.response}]
    assert pc["prompt"] + pc["completion"] == ex.messages
    for row, trl in ((messages, {"messages"}), (pc, {"prompt", "completion"})):
        # original fields kept under their names unless TRL reads them; gradsift's columns last
        kept = {k: v for k, v in SFT_ROWS[name].items() if k not in TRL_COLUMNS}
        assert row == {**{k: row[k] for k in trl}, **kept, "gradsift_id": ex.id, "gradsift_score": 0.5}
        assert list(row)[-2:] == ["gradsift_id", "gradsift_score"]
        assert not (set(row) - trl) & TRL_COLUMNS


def test_clashing_original_fields_are_dropped(tmp_path):
    # a prompt/response record keeps neither its `prompt` string nor PRISM's `rejected`: TRL would read them
    (ex,) = _load(tmp_path, "pr", SFT_ROWS["prompt_response"], "sft")
    row = next(export_rows([ex], "prompt-completion"))
    assert row == {
        "prompt": [{"role": "user", "content": "Capital of France?"}],
        "completion": [{"role": "assistant", "content": "Paris"}],
        "response": "Paris",
    }
    assert set(next(export_rows([ex], "messages"))) == {"messages", "response"}


@pytest.mark.parametrize("name", list(PAIR_ROWS))
def test_pair_formats(tmp_path, name):
    (pair,) = _load(tmp_path, name, PAIR_ROWS[name], "pair")
    implicit = next(export_rows([pair], "messages"))
    assert implicit["chosen"] == pair.prompt + [{"role": "assistant", "content": pair.chosen}]
    assert implicit["rejected"] == pair.prompt + [{"role": "assistant", "content": pair.rejected}]
    assert "prompt" not in implicit
    explicit = next(export_rows([pair], "prompt-completion"))
    assert explicit["prompt"] == pair.prompt
    assert explicit["chosen"] == [{"role": "assistant", "content": pair.chosen}]
    assert explicit["rejected"] == [{"role": "assistant", "content": pair.rejected}]
    if name == "pair":
        assert implicit["score_chosen"] == explicit["score_chosen"] == 9
    else:
        # the HH transcripts are not kept under chosen/rejected: the chats hold them
        assert "Human:" not in json.dumps(explicit)


def test_written_files_read_back_as_the_same_records(tmp_path):
    examples = [ex for name, row in SFT_ROWS.items() for ex in _load(tmp_path, name, row, "sft")]
    for fmt in WriteFormat:
        path = tmp_path / f"sel-{fmt.value}.jsonl.gz"
        write_selection(path, examples, fmt, {"gradsift_id": [e.id for e in examples]})
        rows = [json.loads(line) for line in gzip.decompress(path.read_bytes()).decode().splitlines()]
        assert [r["gradsift_id"] for r in rows] == [e.id for e in examples]
        again = load_examples(str(path), kind=Kind.SFT) if fmt is not WriteFormat.ORIGINAL else None
        if again is not None:
            # gradsift reads its own TRL files back into the same chats
            assert [e.messages for e in again] == [e.messages for e in examples]
    pairs = [p for name, row in PAIR_ROWS.items() for p in _load(tmp_path, name, row, "pair")]
    for fmt in (WriteFormat.MESSAGES, WriteFormat.PROMPT_COMPLETION):  # the originals mix two formats
        path = tmp_path / f"pairs-{fmt.value}.jsonl"
        write_selection(path, pairs, fmt)
        again = load_pairs(str(path))
        assert [(p.prompt, p.chosen, p.rejected) for p in again] == [(p.prompt, p.chosen, p.rejected) for p in pairs]


def test_bad_input(tmp_path):
    (ex,) = _load(tmp_path, "alpaca", SFT_ROWS["alpaca"], "sft")
    with pytest.raises(ValueError, match="choose from original, messages, prompt-completion"):
        write_selection(tmp_path / "x.jsonl", [ex], "chatml")
    with pytest.raises(ValueError, match="has 2 values for 1 records"):
        write_selection(tmp_path / "x.jsonl", [ex], "messages", {"gradsift_score": [1, 2]})
    assert not (tmp_path / "x.jsonl").exists()
