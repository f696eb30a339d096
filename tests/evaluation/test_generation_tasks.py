"""Generation tasks: GSM8K and BIG-Bench-Hard answer extraction, the tasks' metrics against the generated
outputs, the refusal rate with a plugged judge."""

from __future__ import annotations

import json

import pytest
import torch
from evalkit import ex
from hypothesis import given
from hypothesis import strategies as st

from gradsift.data.errors import DataError
from gradsift.data.records import Example
from gradsift.evaluation.generate import GenerationSettings, generate
from gradsift.evaluation.generation_tasks import (
    bbh_answer,
    bbh_correct,
    evaluate_bbh,
    evaluate_gsm8k,
    evaluate_refusal,
    gsm8k_prediction,
    gsm8k_reference,
    normalise_number,
)
from gradsift.evaluation.tasks import build_prompt

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------------ GSM8K


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("She makes 9 * 2 = $<<9*2=18>>18 every day.\n#### 18", "18"),
        ("#### 1,234", "1234"),
        ("#### -5", "-5"),
        ("#### 3.50", "3.5"),
        ("#### $18.00", "18"),
        ("no final answer 42", None),
    ],
)
def test_gsm8k_reference(text, expected):
    assert gsm8k_reference(text) == expected


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("The answer is $1,234.00.", "1234"),
        ("#### 72\nAnd then 5 more words", "72"),
        ("I think 42 ####", "42"),  # nothing after ####: fall back to the last number
        ("3 apples and 5 pears", "5"),
        ("10-5=5", "5"),
        ("pages 3-4", "4"),
        ("x = 0.50", "0.5"),
        ("It is 18.0", "18"),
        ("the list 1,2,3", "3"),
        ("It was -7 degrees", "-7"),
        ("the result: 10 - 4", "4"),
        ("costs $ 30", "30"),
        ("#### $18", "18"),
        ("so 12,345,678 people", "12345678"),
        ("no numbers here", None),
        ("", None),
    ],
)
def test_gsm8k_prediction(output, expected):
    assert gsm8k_prediction(output) == expected


@given(st.integers(min_value=-(10**12), max_value=10**12))
def test_normalise_number_formats(n):
    text = f"{'-' if n < 0 else ''}${abs(n):,}.00"
    assert normalise_number(text) == str(n)
    assert gsm8k_prediction(f"so the total is {text}.") == str(n)


def test_normalise_number_rejects_non_numbers():
    assert normalise_number("abc") is None
    assert normalise_number("NaN") is None
    assert normalise_number("-0.0") == "0"


# ------------------------------------------------------------------------------------------------ BBH


@pytest.mark.parametrize(
    ("output", "target", "correct"),
    [
        ("Let's think step by step.\n... So the answer is (B).", "(B)", True),
        ("So the answer is B.", "(B)", True),
        ("(B) 12/25/1937", "(B)", True),
        ("B) 12/25/1937", "(B)", True),
        ("So the answer is **(B)**.", "(B)", True),
        ("(C)", "(B)", False),
        ("Because the date is wrong", "(B)", False),
        ("The answer is (A)? No, the answer is (B).", "(B)", True),
        ("So the answer is True.", "True", True),
        ("So the answer is Yes.", "yes", True),
        ("the answer is yes", "no", False),
        ("So the answer is ] ].", "] ]", True),
        ("So the answer is  barn   damp dot", "barn damp dot", True),
        ("So the answer is 24.", "24", True),
        ("So the answer is 24.5.", "24", False),
        ("the answer is:\n-50", "-50", True),
        ("\n\nFalse\nbecause not True", "False", True),
    ],
)
def test_bbh_correct(output, target, correct):
    assert bbh_correct(output, target) is correct


def test_bbh_answer():
    assert bbh_answer("blah. So the answer is (D).") == "(D)"
    assert bbh_answer("") == ""


# ------------------------------------------------------------------------------------------------ generation tasks


def test_gsm8k_and_bbh_score_the_generated_outputs(tiny_tokenizer, tiny_model):
    examples = [ex(0, "1+1?", "2\n#### 2"), ex(1, "what is 3 times 4?", "#### 12")]
    settings = GenerationSettings(max_new_tokens=6, batch_size=2)
    res = evaluate_gsm8k(tiny_model, tiny_tokenizer, examples, fewshot=[("2+2?", "#### 4")], settings=settings)
    prompts = [build_prompt(e.prompt_messages, [("2+2?", "#### 4")]) for e in examples]
    outputs = generate(tiny_model, tiny_tokenizer, prompts, settings)
    assert [r["output"] for r in res["examples"]] == outputs
    assert [r["reference"] for r in res["examples"]] == ["2", "12"]
    assert (
        res["metrics"]["exact_match"]
        == sum(gsm8k_prediction(o) == g for o, g in zip(outputs, ["2", "12"], strict=True)) / 2
    )
    assert res["task"] == "gsm8k" and res["n"] == 2
    json.dumps(res)

    bbh = [ex(0, "not True?", "False", task="boolean"), ex(1, "pick", "(A)", task="mc")]
    res = evaluate_bbh(tiny_model, tiny_tokenizer, bbh, settings=settings)
    assert set(res["metrics"]["per_task"]) == {"boolean", "mc"}
    assert res["metrics"]["macro_exact_match"] == pytest.approx(sum(res["metrics"]["per_task"].values()) / 2)


def test_gsm8k_bad_reference(tiny_tokenizer, tiny_model):
    with pytest.raises(DataError, match="mem.jsonl, line 1"):
        evaluate_gsm8k(tiny_model, tiny_tokenizer, [ex(0, "q", "the answer is 4")])
    with pytest.raises(ValueError, match="no GSM8K"):
        evaluate_gsm8k(tiny_model, tiny_tokenizer, [])


class ListJudge:
    """A pluggable judge that refuses exactly the prompts it is given and records its calls."""

    def __init__(self, refused):
        self.refused = refused
        self.calls = []

    def judge(self, prompt, response):
        self.calls.append((prompt, response))
        return prompt in self.refused


def test_refusal_rate_uses_the_plugged_judge(tiny_tokenizer, tiny_model):
    prompts = [
        Example(id="h0", messages=[{"role": "user", "content": "harm 0"}]),
        Example(id="h1", messages=[{"role": "user", "content": "harm 1"}, {"role": "assistant", "content": "ok"}]),
        Example(id="h2", messages=[{"role": "user", "content": "harm 2"}]),
    ]
    judge = ListJudge({"harm 1"})
    settings = GenerationSettings(max_new_tokens=4)
    res = evaluate_refusal(tiny_model, tiny_tokenizer, prompts, judge=judge, settings=settings)
    assert res["metrics"]["refusal_rate"] == pytest.approx(1 / 3)
    outputs = generate(
        tiny_model, tiny_tokenizer, [[{"role": "user", "content": f"harm {i}"}] for i in range(3)], settings
    )
    assert judge.calls == [(f"harm {i}", outputs[i]) for i in range(3)]
    default = evaluate_refusal(tiny_model, tiny_tokenizer, prompts, settings=settings)
    assert default["metrics"]["judge"] == "PhraseRefusalJudge" and "matched" in default["examples"][0]
