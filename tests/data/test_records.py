"""Multiple-choice items: answers as indices or letters, MMLU- and ARC-style records, clear errors."""

from __future__ import annotations

import pytest

from gradsift.data.errors import DataError
from gradsift.data.records import MCItem


def test_mc_item_validation():
    assert MCItem("a", "q", ["x", "y", "z"], "C").answer == 2
    assert MCItem("a", "q", ["x", "y", "z"], "(b)").answer == 1
    assert MCItem("a", "q", ["x", "y"], "1").answer == 1
    for bad in [
        ("q", ["x"], 0),
        ("q", ["x", "y"], 2),
        ("q", ["x", "y"], "E"),
        ("q", ["x", ""], 0),
        ("q", ["x", "y"], True),
    ]:
        with pytest.raises(ValueError):
            MCItem("a", *bad)


def test_mc_item_from_records():
    mmlu = MCItem.from_record({"question": "q", "choices": ["a", "b", "c", "d"], "answer": 3, "subject": "law"}, "m")
    assert (mmlu.answer, mmlu.task) == (3, "law")
    arc = {"question": "q", "choices": {"text": ["a", "b", "c"], "label": ["1", "2", "3"]}, "answerKey": "2"}
    assert MCItem.from_record(arc, "r").answer == 1
    arc_letters = {"question": "q", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "B"}
    assert MCItem.from_record(arc_letters, "r").answer == 1
    with pytest.raises(DataError, match="f.jsonl, line 3, field 'question'"):
        MCItem.from_record({"choices": ["a", "b"], "answer": 0}, "x", "f.jsonl", 3)
    with pytest.raises(DataError, match="field 'choices'"):
        MCItem.from_record({"question": "q", "choices": "ab", "answer": 0}, "x")
    with pytest.raises(DataError, match="field 'answer'"):
        MCItem.from_record({"question": "q", "choices": ["a", "b"], "answer": 5}, "x")
    with pytest.raises(DataError, match="field 'answer'"):
        MCItem.from_record({"question": "q", "choices": ["a", "b"]}, "x")
