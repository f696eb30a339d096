import math

import pytest
import torch
import torch.nn.functional as F
from testkit import make_tiny_model, make_tiny_tokenizer

from gradsift.data.tokenize import collate, encode_messages
from gradsift.model.lora import LoraSettings, attach_lora
from gradsift.model.task import DPOTask, SFTTask, sequence_logps


def _enc(tok, q, a):
    return encode_messages(tok, [{"role": "user", "content": q}, {"role": "assistant", "content": a}], 128)


@pytest.fixture
def setup():
    tok = make_tiny_tokenizer()
    model = attach_lora(make_tiny_model(len(tok)), LoraSettings(), init="gaussian")
    return tok, model


def test_sft_loss_matches_manual_cross_entropy(setup):
    tok, model = setup
    e = _enc(tok, "q?", "an answer")
    batch = collate([e], 0)
    logits = model(input_ids=batch["input_ids"]).logits
    ref = F.cross_entropy(logits[0, :-1], batch["labels"][0, 1:], ignore_index=-100)
    assert torch.allclose(SFTTask("mean").losses(model, batch)[0], ref, atol=1e-5)
    n = e.n_loss_tokens
    assert torch.allclose(SFTTask("sum").losses(model, batch)[0], ref * n, atol=1e-4)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_does_not_change_per_row_losses(setup, side):
    tok, model = setup
    items = [_enc(tok, "q", "a"), _enc(tok, "a much longer question here", "and a longer answer too")]
    together = SFTTask().losses(model, collate(items, 0, side))
    alone = torch.cat([SFTTask().losses(model, collate([e], 0)) for e in items])
    assert torch.allclose(together, alone, atol=1e-5)


def test_dpo_loss_matches_formula_and_reference_is_adapter_off(setup):
    tok, model = setup
    c, r = _enc(tok, "q", "good answer"), _enc(tok, "q", "bad")
    batch = collate([c, r], 0)
    task = DPOTask(beta=0.5)
    pol = sequence_logps(model, batch)[0]
    with model.disable_adapter():
        ref = sequence_logps(model, batch)[0]
    margin = (pol[0] - ref[0]) - (pol[1] - ref[1])
    assert not math.isclose(float(margin), 0.0, abs_tol=1e-6)
    expected = -F.logsigmoid(0.5 * margin)
    assert torch.allclose(task.losses(model, batch)[0], expected, atol=1e-5)
    with pytest.raises(ValueError):
        DPOTask(beta=0)
