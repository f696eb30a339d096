"""Multiple choice against a per-option loop, for each prompt format and normalisation."""

from __future__ import annotations

import pytest
import torch

from gradsift.data.records import MCItem
from gradsift.evaluation.generate import encode_prompt
from gradsift.evaluation.multiple_choice import evaluate_multiple_choice

torch.set_num_threads(1)


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


def test_multiple_choice_bad_settings(tiny_tokenizer, tiny_model):
    items = [MCItem("a", "q", ["x", "y"], 0)]
    with pytest.raises(ValueError):
        evaluate_multiple_choice(tiny_model, tiny_tokenizer, items, fmt="cloze")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        evaluate_multiple_choice(tiny_model, tiny_tokenizer, items, normalisation="bytes")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        evaluate_multiple_choice(tiny_model, tiny_tokenizer, [])
