"""What the tasks share: BIG-Bench-Hard prompt files, prompt building, result files."""

from __future__ import annotations

import json

import pytest

from gradsift.evaluation.tasks import BBH_COT_TEMPLATE, build_prompt, read_cot_prompt, write_results


def test_read_cot_prompt_drops_canary(tmp_path):
    p = tmp_path / "task.txt"
    p.write_text("BENCHMARK DATA SHOULD NEVER APPEAR. canary GUID 123\n-----\nInfer the date.\n\nQ: x\nA: y\n")
    assert read_cot_prompt(p) == "Infer the date.\n\nQ: x\nA: y"
    q = tmp_path / "plain.txt"
    q.write_text("Q: a\nA: b\n")
    assert read_cot_prompt(q) == "Q: a\nA: b"


def test_build_prompt():
    msgs = [{"role": "system", "content": "sys"}, {"role": "user", "content": "2+2?"}]
    out = build_prompt(msgs, fewshot=[("1+1?", "2")], template=BBH_COT_TEMPLATE)
    assert [m["role"] for m in out] == ["system", "user", "assistant", "user"]
    assert out[1]["content"] == "Q: 1+1?\nA: Let's think step by step."
    assert out[3]["content"] == "Q: 2+2?\nA: Let's think step by step."
    text = build_prompt(msgs, fewshot="Q: 1+1?\nA: 2\n")
    assert text[-1]["content"] == "Q: 1+1?\nA: 2\n\n2+2?"
    assert msgs[-1]["content"] == "2+2?"  # input untouched
    with pytest.raises(ValueError, match="question"):
        build_prompt(msgs, template="Q: {q}")
    with pytest.raises(ValueError, match="user turn"):
        build_prompt([{"role": "assistant", "content": "x"}])


def test_write_results_atomic(tmp_path):
    path = tmp_path / "sub" / "res.json"
    result = {"task": "gsm8k", "metrics": {"exact_match": 0.5}, "examples": [{"prompt": "é"}]}
    write_results(path, result)
    assert json.loads(path.read_text(encoding="utf-8")) == result
    with pytest.raises(ValueError):
        write_results(path, {"metrics": {"x": float("nan")}})
    assert json.loads(path.read_text(encoding="utf-8")) == result  # untouched
    assert [p.name for p in path.parent.iterdir()] == ["res.json"]  # no temporary file left
