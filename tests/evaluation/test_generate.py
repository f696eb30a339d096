"""Batched greedy generation: prompt format, order restoration, stopping."""

from __future__ import annotations

import pytest
import torch
from testkit import make_tiny_model, make_tiny_tokenizer

from gradsift.data.tokenize import IGNORE, encode_messages
from gradsift.evaluation.generate import (
    GenerationSettings,
    encode_prompt,
    generate,
    render_prompt,
    stop_token_ids,
)

torch.set_num_threads(1)

PROMPTS = [
    "hi",
    "a much longer prompt than the others, with several words in it",
    "mid one",
    "what is 2+2?",
    "zz",
    "tell me about the sea and the sky and the birds",
    "ok",
]


def chaotic_model(tokenizer):
    """A float64 tiny model with large random weights, so greedy outputs differ between prompts."""
    model = make_tiny_model(len(tokenizer)).double()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * (1.0 if "embed" in name else 0.3))
    return model


def chat(text):
    return [{"role": "user", "content": text}]


@pytest.mark.parametrize("templated", [True, False])
def test_prompt_matches_training_format(templated):
    tok = make_tiny_tokenizer(chat_template=templated)
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]
    prompt = encode_prompt(tok, msgs)
    enc = encode_messages(tok, msgs + [{"role": "assistant", "content": "hi"}], max_length=512)
    assert enc.input_ids[: len(prompt)] == prompt
    first_loss = next(i for i, t in enumerate(enc.labels) if t != IGNORE)
    assert first_loss == len(prompt)
    if not templated:
        assert render_prompt(tok, msgs) == "### System:\nbe brief\n\n### User:\nhello there\n\n### Assistant:\n"


def test_batched_equals_one_by_one_in_input_order():
    tok = make_tiny_tokenizer()
    model = chaotic_model(tok)
    model.train()
    settings = GenerationSettings(max_new_tokens=10, batch_size=3)
    batched = generate(model, tok, [chat(p) for p in PROMPTS], settings)
    single = [generate(model, tok, [chat(p)], GenerationSettings(max_new_tokens=10, batch_size=1))[0] for p in PROMPTS]
    assert batched == single
    assert len(set(batched)) > 3  # outputs differ, so a wrong order would show
    assert model.training  # the caller's mode is restored


def test_stops_at_end_of_sequence():
    tok = make_tiny_tokenizer()
    model = chaotic_model(tok)
    ids = encode_prompt(tok, chat(PROMPTS[1]))
    raw = model.generate(
        input_ids=torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        max_new_tokens=12,
        do_sample=False,
        pad_token_id=0,
    )[0, len(ids) :].tolist()
    k = next(i for i in range(1, len(raw)) if raw[i] not in raw[:i])
    model.generation_config.eos_token_id = [tok.eos_token_id, raw[k]]
    assert stop_token_ids(model, tok) == [tok.eos_token_id, raw[k]]
    out = generate(model, tok, [chat(PROMPTS[1])], GenerationSettings(max_new_tokens=12))
    assert out == [tok.decode(raw[:k], skip_special_tokens=True)]


def test_bad_input():
    with pytest.raises(ValueError):
        GenerationSettings(max_new_tokens=0)
    with pytest.raises(ValueError):
        GenerationSettings(batch_size=0)
    tok = make_tiny_tokenizer()
    with pytest.raises(ValueError):
        render_prompt(tok, [])
    model = make_tiny_model(len(tok))
    tok.pad_token = None
    tok.eos_token = None
    model.generation_config.eos_token_id = None
    with pytest.raises(ValueError, match="pad token"):
        generate(model, tok, [chat("hi")])
