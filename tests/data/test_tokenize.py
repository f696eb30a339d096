import pytest
import torch
from testkit import make_tiny_tokenizer

from gradsift.data.records import Example
from gradsift.data.tokenize import IGNORE, bucket_batches, collate, encode_examples, encode_messages


def _chat(*turns):
    roles = ["user", "assistant"]
    return [{"role": roles[i % 2], "content": t} for i, t in enumerate(turns)]


def _loss_text(tok, enc):
    return tok.decode([t for t in enc.labels if t != IGNORE])


@pytest.mark.parametrize("template", [True, False])
def test_loss_mask_covers_only_the_response(template):
    tok = make_tiny_tokenizer(chat_template=template)
    enc = encode_messages(tok, _chat("What is 2+2?", "It is 4."), max_length=256)
    text = _loss_text(tok, enc)
    assert text.startswith("It is 4.")
    assert "2+2" not in text
    assert len(enc.input_ids) == len(enc.labels)
    assert not enc.truncated


def test_multi_turn_masks_every_assistant_turn():
    tok = make_tiny_tokenizer()
    enc = encode_messages(tok, _chat("hi", "hello A", "more?", "yes B"), max_length=512)
    text = _loss_text(tok, enc)
    assert "hello A" in text and "yes B" in text
    assert "more?" not in text and "hi" not in text.replace("hello", "")


def test_system_turn_is_never_in_the_loss():
    tok = make_tiny_tokenizer()
    msgs = [{"role": "system", "content": "SYS"}] + _chat("q", "ans")
    assert "SYS" not in _loss_text(tok, encode_messages(tok, msgs, 256))


def test_right_truncation_keeps_start_and_counts():
    tok = make_tiny_tokenizer()
    exs = [Example(id=str(i), messages=_chat("q" * 5, "a" * n)) for i, n in enumerate([5, 300])]
    enc, stats = encode_examples(tok, exs, max_length=64)
    assert len(enc[1]) == 64 and enc[1].truncated and not enc[0].truncated
    assert stats.n_truncated == 1 and stats.truncated_ids == ["1"]


def test_prompt_longer_than_max_length_keeps_some_response():
    tok = make_tiny_tokenizer()
    enc = encode_messages(tok, _chat("q" * 300, "answer!"), max_length=64)
    assert len(enc) == 64
    assert enc.n_loss_tokens > 0
    assert _loss_text(tok, enc).startswith("answer!")


def test_left_truncation_keeps_end():
    tok = make_tiny_tokenizer()
    enc = encode_messages(tok, _chat("q", "a" * 200 + "END"), max_length=32, truncation="left")
    assert "END" in _loss_text(tok, enc)


def test_rejected_response_replaces_last_turn():
    tok = make_tiny_tokenizer()
    ex = Example(id="x", messages=_chat("q", "good"), rejected="bad")
    (enc,), _ = encode_examples(tok, [ex], 64, response="rejected")
    assert _loss_text(tok, enc).startswith("bad")
    with pytest.raises(ValueError, match="rejected"):
        encode_examples(tok, [Example(id="y", messages=_chat("q", "a"))], 64, response="rejected")


@pytest.mark.parametrize("side", ["right", "left"])
def test_collate_pads_and_masks(side):
    tok = make_tiny_tokenizer()
    a = encode_messages(tok, _chat("q", "a"), 64)
    b = encode_messages(tok, _chat("longer question", "longer answer"), 64)
    batch = collate([a, b], pad_id=0, padding_side=side)
    assert batch["input_ids"].shape == (2, len(b))
    assert int(batch["attention_mask"][0].sum()) == len(a)
    row = batch["labels"][0]
    kept = row[batch["attention_mask"][0].bool()]
    assert torch.equal(kept, torch.tensor(a.labels))
    assert (row[~batch["attention_mask"][0].bool()] == IGNORE).all()


def test_bucket_batches_cover_each_index_once_and_respect_token_bound():
    lengths = [5, 100, 30, 31, 99, 7, 64, 1]
    batches = bucket_batches(lengths, max_tokens=128, max_batch=3)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 3
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 128
    with pytest.raises(ValueError):
        bucket_batches(lengths, max_tokens=0)
