"""LoRA settings: the layer-depth knob (``last:K`` or a list) and its effect on gradients."""

from __future__ import annotations

import pytest
import torch
from testkit import make_tiny_model, make_tiny_tokenizer

from gradsift.data.tokenize import collate, encode_messages
from gradsift.gradients.grads import LoraGradients
from gradsift.model.lora import LoraSettings, attach_lora, parse_layers
from gradsift.model.task import SFTTask


def test_layer_specs_parse_and_bad_ones_are_refused():
    assert parse_layers("last:3") == ("last", [3])
    assert parse_layers("5, 0,2") == ("list", [0, 2, 5])
    for bad in ("last:0", "last:x", "first:2", "", "1,1", "-1"):
        with pytest.raises(ValueError, match="last:K"):
            LoraSettings(layers=bad)
    assert LoraSettings(layers="last:2").layer_indices(4) == [2, 3]
    assert LoraSettings(layers="last:9").layer_indices(4) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="4 decoder layers"):
        LoraSettings(layers="1,4").layer_indices(4)


def test_settings_without_layers_keep_their_old_form():
    # cache keys hash these settings: runs made before the option existed must keep their keys
    assert "layers" not in LoraSettings().as_dict()
    assert LoraSettings(layers="last:1").as_dict()["layers"] == "last:1"


def _lora_layers(model) -> set[int]:
    return {int(n.split(".layers.")[1].split(".")[0]) for n, _ in model.named_parameters() if "lora_" in n}


def test_last_k_layers_get_lora_and_their_gradients_equal_the_full_model():
    torch.set_num_threads(1)
    tok = make_tiny_tokenizer()
    layers = make_tiny_model(len(tok), seed=0).config.num_hidden_layers
    assert layers >= 2
    full = attach_lora(make_tiny_model(len(tok), seed=0).double(), LoraSettings())
    last = attach_lora(make_tiny_model(len(tok), seed=0).double(), LoraSettings(layers="last:1"))
    assert _lora_layers(full) == set(range(layers)) and _lora_layers(last) == {layers - 1}
    # same LoRA weights on the last layer; B = 0 elsewhere leaves the forward pass unchanged
    source = dict(full.named_parameters())
    with torch.no_grad():
        for name, p in last.named_parameters():
            if "lora_" in name:
                p.copy_(source[name])
    chats = [
        [{"role": "user", "content": "abc" * (i + 1)}, {"role": "assistant", "content": "ab " * (2 * i + 1)}]
        for i in range(3)
    ]
    batch = collate([encode_messages(tok, c, 64) for c in chats], tok.pad_token_id)
    g_full, g_last = LoraGradients(full), LoraGradients(last)
    full_feats = g_full.compute(batch, SFTTask()).features
    last_feats = g_last.compute(batch, SFTTask()).features
    kept = [layer for layer in g_full.layers if f".layers.{layers - 1}." in layer.param_name]
    want = torch.cat([full_feats[:, x.offset : x.offset + x.numel] for x in kept], dim=1)
    torch.testing.assert_close(last_feats, want)
