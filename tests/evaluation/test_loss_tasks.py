"""Loss tasks against per-example loops: target loss, utility (loss and exact match), preference margins."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from evalkit import ex
from testkit import make_tiny_model

from gradsift.data.records import Pair
from gradsift.data.tokenize import IGNORE, encode_messages
from gradsift.evaluation.generate import GenerationSettings, generate
from gradsift.evaluation.loss_tasks import evaluate_preference, evaluate_target_loss, evaluate_utility, normalise_text
from gradsift.evaluation.tasks import ScoringSettings
from gradsift.model.lora import LoraSettings, attach_lora

torch.set_num_threads(1)


def test_normalise_text():
    assert normalise_text("  The Cat, sat!  ") == "cat sat"


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


def test_a_cached_reference_gives_the_same_margins_and_is_not_recomputed(tiny_tokenizer, tiny_model, tmp_path):
    model = attach_lora(tiny_model, LoraSettings(rank=4, target_modules=["q_proj", "v_proj"]), seed=1, init="gaussian")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.mul_(20)
    settings = ScoringSettings(batch_size=2)
    plain = evaluate_preference(model, tiny_tokenizer, PAIRS, settings=settings)
    cache = tmp_path / "ref.npy"
    first = evaluate_preference(model, tiny_tokenizer, PAIRS, settings=settings, reference_cache=cache)
    assert np.load(cache).shape == (len(PAIRS), 2)
    # the reference is read back, never computed again: the adapter is not switched off any more
    model.disable_adapter = None
    again = evaluate_preference(model, tiny_tokenizer, PAIRS, settings=settings, reference_cache=cache)
    for res in (first, again):
        assert [r["margin"] for r in res["examples"]] == pytest.approx(
            [r["margin"] for r in plain["examples"]], rel=1e-6, abs=1e-6
        )
    np.save(cache, np.zeros((len(PAIRS) + 1, 2)))
    with pytest.raises(ValueError, match="shape"):
        evaluate_preference(model, tiny_tokenizer, PAIRS, settings=settings, reference_cache=cache)


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
