"""Shared helpers for the feature tests: tiny LoRA models, variable-length batches, and the slow
reference (one autograd backward per example) that every batched path is checked against."""

from __future__ import annotations

import torch
from testkit import make_tiny_model, make_tiny_tokenizer

from gradsift.data.tokenize import Encoded, collate, encode_messages
from gradsift.model.lora import LoraSettings, attach_lora

QV = ["q_proj", "v_proj"]
ALL = ["all-linear"]


def lora_model(targets=QV, dtype=torch.float64, seed=0, dropout=0.0):
    """A tiny Llama with Gaussian-initialised LoRA (every LoRA gradient non-zero)."""
    torch.set_num_threads(1)
    tok = make_tiny_tokenizer()
    base = make_tiny_model(len(tok), seed=seed).to(dtype)
    model = attach_lora(base, LoraSettings(target_modules=list(targets), dropout=dropout), seed, "gaussian")
    return tok, model


def encodings(tok, n: int = 5, seed: int = 0) -> list[Encoded]:
    """`n` chats of clearly different lengths (so padding is substantial on either side)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        q = "".join(chr(97 + int(c)) for c in torch.randint(0, 26, (3 + 4 * i,), generator=g))
        a = " ".join("ab"[int(c)] * (1 + int(c)) for c in torch.randint(0, 2, (2 + 3 * ((i * 7) % n),), generator=g))
        out.append(encode_messages(tok, [{"role": "user", "content": q}, {"role": "assistant", "content": a}], 256))
    return out


def lora_params(model) -> list[torch.nn.Parameter]:
    """The LoRA weights in named_parameters order (the flat gradient's layout)."""
    return [p for n, p in model.named_parameters() if "lora_" in n]


def reference_grad(model, batch, task) -> torch.Tensor:
    """Flat gradient [P] of ``task.losses(model, batch).sum()`` by ordinary autograd."""
    params = lora_params(model)
    for p in params:
        p.requires_grad_(True)
    loss = task.losses(model, batch).sum()
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])


def pad_id(tok) -> int:
    return tok.pad_token_id


def single(tok, enc: Encoded) -> dict[str, torch.Tensor]:
    return collate([enc], pad_id(tok))


def assert_close_rows(got: torch.Tensor, want: torch.Tensor, cos_min: float = 0.9999, rel_max: float = 1e-4):
    """Row-wise cosine >= cos_min and relative error <= rel_max (the issue's acceptance thresholds)."""
    assert got.shape == want.shape
    for i in range(want.shape[0]):
        cos = torch.nn.functional.cosine_similarity(got[i], want[i], dim=0).item()
        rel = ((got[i] - want[i]).norm() / want[i].norm()).item()
        assert want[i].norm() > 0, f"row {i}: zero reference gradient makes the check vacuous"
        assert cos >= cos_min and rel <= rel_max, f"row {i}: cosine {cos}, relative error {rel}"
