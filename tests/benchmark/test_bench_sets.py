"""`gradsift bench`'s data sets: mixing sources (samples, labels, limits, held-out split), rejected responses as
training answers, and every set kind read back identically."""

from __future__ import annotations

import pytest
from benchkit import write_jsonl

from gradsift.benchmark.dataspec import DataSpec, Source
from gradsift.benchmark.sets import build_set, read_set, record_row, text_length
from gradsift.data.records import Example, MCItem, Pair


def _rows(prefix: str, n: int, task: str | None = None) -> list[dict]:
    out = []
    for i in range(n):
        row = {"instruction": f"{prefix} question {i}", "output": f"{prefix} answer {i} " + "x" * i}
        if task:
            row["task"] = task
        out.append(row)
    return out


def test_build_set_mixes_samples_labels_and_splits(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", _rows("a", 20, task="own"))
    b = write_jsonl(tmp_path / "b.jsonl", _rows("b", 10))
    spec = DataSpec(
        sources=[
            Source(path=str(a), limit=6),
            Source(path=str(b), name="bee", task="general", take="first", limit=4),
        ],
        holdout=3,
    )
    records, held = build_set(spec, "targets", seed=0)
    assert len(records) == 7 and len(held) == 3
    everything = records + held
    assert {r.id.split("/")[0] for r in everything} == {"a", "bee"}
    assert sum(r.id.startswith("a/") for r in everything) == 6
    assert {r.task for r in everything if r.id.startswith("a/")} == {"own"}
    assert {r.task for r in everything if r.id.startswith("bee/")} == {"general"}
    # take: first keeps the file's first records
    bee = sorted(r.messages[0]["content"] for r in everything if r.id.startswith("bee/"))
    assert bee == [f"b question {i}" for i in range(4)]
    assert not {r.id for r in records} & {r.id for r in held}
    again, again_held = build_set(spec, "targets", seed=0)
    assert [r.id for r in again + again_held] == [r.id for r in everything]
    other, other_held = build_set(spec, "targets", seed=1)
    assert [r.id for r in other + other_held] != [r.id for r in everything]


def test_max_chars_and_limits(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", _rows("a", 20))
    records, _ = build_set(DataSpec(sources=[Source(path=str(a), max_chars=35)]), "pool", 0)
    assert records and all(len(r.messages[0]["content"]) + len(r.response) <= 35 for r in records)
    assert len(records) < 20
    with pytest.raises(ValueError, match="only"):
        build_set(DataSpec(sources=[Source(path=str(a), max_chars=35, limit=19)]), "pool", 0)
    with pytest.raises(ValueError, match="leaves none"):
        build_set(DataSpec(sources=[Source(path=str(a))], holdout=20), "targets", 0)


def test_text_length_counts_every_text_field_of_each_kind():
    pair = Pair(id="p", prompt=[{"role": "user", "content": "abc"}], chosen="de", rejected="fgh")
    assert text_length(pair) == 8
    assert text_length(MCItem(id="m", question="q?", choices=["yes", "no"], answer=0)) == 7
    ex = Example(id="e", messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo!"}])
    assert text_length(ex) == 5
    assert text_length(Example(id="e", messages=ex.messages, rejected="nope")) == 9


def test_rejected_responses_become_the_training_answer(tmp_path):
    rows = [
        {"prompt": f"do harm {i}", "chosen": "I can't help with that.", "rejected": f"Sure: step {i}"}
        for i in range(4)
    ]
    rows.append({"prompt": "empty", "chosen": "no", "rejected": ""})
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    records, _ = build_set(DataSpec(sources=[Source(path=str(path), response="rejected")], shuffle=False), "h", 0)
    assert [r.response for r in records] == [f"Sure: step {i}" for i in range(4)]
    assert all(isinstance(r, Example) for r in records)


@pytest.mark.parametrize("kind", ["sft", "pair", "prompts", "mc"])
def test_prepared_sets_read_back_identically(tmp_path, kind):
    if kind == "pair":
        rows = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}", "task": "t"} for i in range(3)]
    elif kind == "mc":
        rows = [{"question": f"q{i}?", "choices": ["a", "b", "c"], "answer": "B", "subject": "s"} for i in range(3)]
    elif kind == "prompts":
        rows = [{"goal": f"harm {i}", "target": "Sure"} for i in range(3)]
    else:
        rows = [{"instruction": f"q{i}", "output": f"a{i}", "rejected": f"r{i}"} for i in range(3)]
    src = write_jsonl(tmp_path / "src.jsonl", rows)
    records, _ = build_set(DataSpec(sources=[Source(path=str(src))], kind=kind), "s", 0)
    out = write_jsonl(tmp_path / "out.jsonl", [record_row(r) for r in records])
    back = read_set(out, kind)
    assert [record_row(r) for r in back] == [record_row(r) for r in records]
    if kind == "pair":
        assert all(isinstance(r, Pair) and r.rejected.startswith("bad") for r in back)
