"""Task metrics: answer extraction, likelihood tasks against per-example loops, result files."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from testkit import make_tiny_model

from gradsift.data.errors import DataError
from gradsift.data.records import Example, Pair
from gradsift.data.tokenize import IGNORE, encode_messages
from gradsift.evaluation.generate import GenerationSettings, encode_prompt, generate
from gradsift.evaluation.tasks import (
    BBH_COT_TEMPLATE,
    TASKS,
    MCItem,
    ScoringSettings,
    TaskKind,
    bbh_answer,
    bbh_correct,
    build_prompt,
    evaluate_bbh,
    evaluate_gsm8k,
    evaluate_multiple_choice,
    evaluate_preference,
    evaluate_refusal,
    evaluate_target_loss,
    evaluate_utility,
    gsm8k_prediction,
    gsm8k_reference,
    normalise_number,
    normalise_text,
    read_cot_prompt,
    write_results,
)
from gradsift.model.lora import LoraSettings, attach_lora

torch.set_num_threads(1)


def ex(i, question, answer, task=None):
    msgs = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return Example(id=f"e{i}", messages=msgs, task=task, source="mem.jsonl", line=i + 1)


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


def test_normalise_text():
    assert normalise_text("  The Cat, sat!  ") == "cat sat"


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


# ------------------------------------------------------------------------------------------------ likelihood tasks


def manual_response_loss(model, tok, example):
    enc = encode_messages(tok, example.messages, max_length=1024)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([enc.input_ids])).logits[0]
    logp = torch.log_softmax(logits.double(), -1)
    nll = [-logp[t - 1, enc.labels[t]].item() for t in range(1, len(enc)) if enc.labels[t] != IGNORE]
    return sum(nll) / len(nll), len(nll)


EXAMPLES = [
    ex(0, "hello", "world"),
    ex(1, "a longer question about several things", "and a rather longer answer to go with it"),
    ex(2, "x", "y"),
    ex(3, "count to five", "1 2 3 4 5"),
    ex(4, "medium prompt", "medium answer here"),
]


def test_target_loss_matches_a_per_example_loop(tiny_tokenizer, tiny_model):
    res = evaluate_target_loss(tiny_model, tiny_tokenizer, EXAMPLES, ScoringSettings(batch_size=2))
    manual = [manual_response_loss(tiny_model, tiny_tokenizer, e) for e in EXAMPLES]
    got = [(r["loss"], r["n_tokens"]) for r in res["examples"]]
    for (gl, gn), (ml, mn) in zip(got, manual, strict=True):
        assert gl == pytest.approx(ml, rel=1e-5) and gn == mn
    assert res["metrics"]["mean_loss"] == pytest.approx(sum(m for m, _ in manual) / len(manual), rel=1e-5)
    token_mean = sum(m * n for m, n in manual) / sum(n for _, n in manual)
    assert res["metrics"]["token_mean_loss"] == pytest.approx(token_mean, rel=1e-5)
    assert res["metrics"]["n_truncated"] == 0
    with pytest.raises(ValueError):
        evaluate_target_loss(tiny_model, tiny_tokenizer, [])
    with pytest.raises(ValueError):
        ScoringSettings(max_length=1)
    with pytest.raises(ValueError):
        ScoringSettings(truncation="middle")  # type: ignore[arg-type]


def test_utility_loss_and_exact_match(tiny_tokenizer, tiny_model):
    settings = GenerationSettings(max_new_tokens=5)
    greedy = generate(tiny_model, tiny_tokenizer, [e.prompt_messages for e in EXAMPLES[:2]], settings)
    examples = [ex(0, EXAMPLES[0].messages[0]["content"], greedy[0]), EXAMPLES[1]]
    res = evaluate_utility(tiny_model, tiny_tokenizer, examples, generation=settings)
    assert [r["correct"] for r in res["examples"]] == [
        True,
        normalise_text(greedy[1]) == normalise_text(examples[1].response),
    ]
    target = evaluate_target_loss(tiny_model, tiny_tokenizer, examples)
    assert res["metrics"]["mean_loss"] == pytest.approx(target["metrics"]["mean_loss"])
    assert "exact_match" not in evaluate_utility(tiny_model, tiny_tokenizer, examples)["metrics"]


def manual_logp(model, tok, prompt_ids, text):
    cont = tok(text, add_special_tokens=False)["input_ids"]
    ids = prompt_ids + cont
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
    total = sum(logp[len(prompt_ids) + k - 1, t].item() for k, t in enumerate(cont))
    return total, len(cont)


MC_QUESTIONS = [
    ("What colour is the sky?", ["blue", "green", "a deep shade of purple"]),
    ("Capital of France?", ["Paris", "Rome", "Berlin", "Madrid"]),
    ("2 + 2 = ?", ["4", "five", "twenty-two"]),
    ("Pick one", ["x", "yy"]),
]


@pytest.mark.parametrize(
    ("fmt", "normalisation"), [("text", "token"), ("text", "char"), ("text", "sum"), ("letter", "sum")]
)
def test_multiple_choice_matches_a_loop(tiny_tokenizer, tiny_model, fmt, normalisation):
    manual_scores = []
    for q, choices in MC_QUESTIONS:
        if fmt == "letter":
            options = "\n".join(f"{chr(65 + k)}. {c}" for k, c in enumerate(choices))
            content, texts = f"{q}\n{options}\nAnswer:", [chr(65 + k) for k in range(len(choices))]
        else:
            content, texts = q, choices
        prompt_ids = encode_prompt(tiny_tokenizer, [{"role": "user", "content": content}])
        scores = []
        for text in texts:
            total, n = manual_logp(tiny_model, tiny_tokenizer, prompt_ids, text)
            scores.append({"token": total / n, "char": total / len(text), "sum": total}[normalisation])
        manual_scores.append(scores)
    best = [max(range(len(s)), key=s.__getitem__) for s in manual_scores]
    worst = [min(range(len(s)), key=s.__getitem__) for s in manual_scores]
    # the first two items' answers are the model's choice, the last two are its least likely option
    answers = [best[0], best[1], worst[2], worst[3]]
    items = [
        MCItem(f"q{i}", q, c, a, task="t") for i, ((q, c), a) in enumerate(zip(MC_QUESTIONS, answers, strict=True))
    ]
    res = evaluate_multiple_choice(
        tiny_model, tiny_tokenizer, items, fmt=fmt, normalisation=normalisation, batch_size=3
    )
    for row, scores in zip(res["examples"], manual_scores, strict=True):
        assert row["scores"] == pytest.approx(scores, rel=1e-4, abs=1e-5)
    assert [r["choice"] for r in res["examples"]] == best
    assert res["metrics"]["accuracy"] == 0.5 and res["metrics"]["per_task"] == {"t": 0.5}


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


def test_multiple_choice_bad_settings(tiny_tokenizer, tiny_model):
    items = [MCItem("a", "q", ["x", "y"], 0)]
    with pytest.raises(ValueError):
        evaluate_multiple_choice(tiny_model, tiny_tokenizer, items, fmt="cloze")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        evaluate_multiple_choice(tiny_model, tiny_tokenizer, items, normalisation="bytes")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        evaluate_multiple_choice(tiny_model, tiny_tokenizer, [])


PAIRS = [
    Pair(id=f"p{i}", prompt=[{"role": "user", "content": q}], chosen=c, rejected=r)
    for i, (q, c, r) in enumerate(
        [
            ("be nice", "sure, happy to help", "no"),
            ("say hi", "hi", "hello there, friend"),
            ("a question", "an answer", "a different and much longer answer"),
            ("x", "y", "z"),
            ("write a poem", "roses are red", "violets are blue, sugar is sweet"),
        ]
    )
]


def summed_logp(model, tok, prompt, response):
    enc = encode_messages(tok, prompt + [{"role": "assistant", "content": response}], max_length=1024)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([enc.input_ids])).logits[0].double(), -1)
    return sum(logp[t - 1, enc.labels[t]].item() for t in range(1, len(enc)) if enc.labels[t] != IGNORE)


def test_preference_matches_manual_margins(tiny_tokenizer, tiny_model):
    model = attach_lora(tiny_model, LoraSettings(rank=4, target_modules=["q_proj", "v_proj"]), seed=1, init="gaussian")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.mul_(20)  # large enough that the policy and reference differ noticeably
    manual = []
    for p in PAIRS:
        pol = summed_logp(model, tiny_tokenizer, p.prompt, p.chosen) - summed_logp(
            model, tiny_tokenizer, p.prompt, p.rejected
        )
        with model.disable_adapter():
            ref = summed_logp(model, tiny_tokenizer, p.prompt, p.chosen) - summed_logp(
                model, tiny_tokenizer, p.prompt, p.rejected
            )
        manual.append(pol - ref)
    assert max(abs(m) for m in manual) > 1e-3
    res = evaluate_preference(model, tiny_tokenizer, PAIRS, beta=0.5, settings=ScoringSettings(batch_size=2))
    assert [r["margin"] for r in res["examples"]] == pytest.approx(manual, rel=1e-4, abs=1e-4)
    assert res["metrics"]["accuracy"] == sum(m > 0 for m in manual) / len(manual)
    assert res["metrics"]["mean_reward_margin"] == pytest.approx(0.5 * sum(manual) / len(manual), rel=1e-4, abs=1e-4)


def test_preference_with_a_separate_reference(tiny_tokenizer):
    policy = make_tiny_model(len(tiny_tokenizer), seed=1)
    reference = make_tiny_model(len(tiny_tokenizer), seed=2)
    manual = []
    for p in PAIRS:
        c = summed_logp(policy, tiny_tokenizer, p.prompt, p.chosen) - summed_logp(
            reference, tiny_tokenizer, p.prompt, p.chosen
        )
        r = summed_logp(policy, tiny_tokenizer, p.prompt, p.rejected) - summed_logp(
            reference, tiny_tokenizer, p.prompt, p.rejected
        )
        manual.append(c - r)
    res = evaluate_preference(policy, tiny_tokenizer, PAIRS, reference_model=reference)
    assert [r["margin"] for r in res["examples"]] == pytest.approx(manual, rel=1e-4, abs=1e-4)
    with pytest.raises(ValueError, match="needs a reference"):
        evaluate_preference(policy, tiny_tokenizer, PAIRS)
    with pytest.raises(ValueError):
        evaluate_preference(policy, tiny_tokenizer, PAIRS, beta=0.0, reference_model=reference)


# ------------------------------------------------------------------------------------------------ registry and files


def test_every_kind_has_a_function():
    assert set(TASKS) == set(TaskKind)


def test_write_results_atomic(tmp_path):
    path = tmp_path / "sub" / "res.json"
    result = {"task": "gsm8k", "metrics": {"exact_match": 0.5}, "examples": [{"prompt": "é"}]}
    write_results(path, result)
    assert json.loads(path.read_text(encoding="utf-8")) == result
    with pytest.raises(ValueError):
        write_results(path, {"metrics": {"x": float("nan")}})
    assert json.loads(path.read_text(encoding="utf-8")) == result  # untouched
    assert [p.name for p in path.parent.iterdir()] == ["res.json"]  # no temporary file left
