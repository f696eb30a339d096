"""Batched greedy generation for evaluation.

Prompts are rendered exactly as training renders them (see `gradsift.data.tokenize`): the tokenizer's
chat template with the generation prompt when it has one, else the plain ``"### User:\\n...\\n\\n"``
layout followed by ``"### Assistant:\\n"``. Prompts are sorted by length (longest first, so an
out-of-memory shows up in the first batch), left-padded, decoded greedily, and the continuations are
returned in input order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm


@dataclass
class GenerationSettings:
    """How to generate.

    Attributes:
        max_new_tokens: Token budget per continuation; generation stops there or at an end-of-sequence token.
        batch_size: Number of prompts decoded together.
    """

    max_new_tokens: int = 256
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")


def render_prompt(tokenizer: Any, messages: Sequence[dict[str, str]]) -> str:
    """Text the model sees before its answer, in the same format training uses.

    Args:
        tokenizer: A Hugging Face tokenizer.
        messages: Chat turns ending with the turn to answer (usually a user turn).

    Returns:
        The rendered prompt, ending where the assistant's response starts.
    """
    if not messages:
        raise ValueError("a prompt needs at least one message")
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    # Mirrors `_segments` in data/tokenize.py: the text before an assistant turn's loss tokens.
    return "".join(f"### {m['role'].capitalize()}:\n{m['content']}\n\n" for m in messages) + "### Assistant:\n"


def encode_prompt(tokenizer: Any, messages: Sequence[dict[str, str]]) -> list[int]:
    """Token ids of `render_prompt`; special tokens are added only without a chat template, as in training."""
    templated = bool(getattr(tokenizer, "chat_template", None))
    return list(tokenizer(render_prompt(tokenizer, messages), add_special_tokens=not templated)["input_ids"])


def stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """End-of-sequence ids: the tokenizer's and every one in the model's generation config.

    Chat models often end a turn with a token other than the tokenizer's `eos_token`, so both are used.
    """
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(config_eos, int):
        config_eos = [config_eos]
    for t in config_eos or []:
        if int(t) not in ids:
            ids.append(int(t))
    return ids


def model_device(model: Any) -> torch.device:
    """Device of the model's first parameter (where inputs must go)."""
    return next(model.parameters()).device


@contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """Run in eval mode (no dropout, so greedy outputs and losses are deterministic), then restore the mode."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[dict[str, str]]],
    settings: GenerationSettings | None = None,
    progress: bool = False,
) -> list[str]:
    """Greedy continuations of chat prompts.

    Args:
        model: A causal LM (transformers or peft); its adapter, if any, is active.
        tokenizer: Its tokenizer; needs a pad or an eos token.
        prompts: Chats, each ending with the turn to answer.
        settings: Token budget and batch size.
        progress: Show a progress bar.

    Returns:
        One decoded continuation per prompt, in input order, cut before the first end-of-sequence token and
        without special tokens.

    Raises:
        ValueError: The tokenizer has neither a pad nor an eos token.
    """
    settings = settings or GenerationSettings()
    stops = stop_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stops[0] if stops else None)
    if pad_id is None:
        raise ValueError("the tokenizer has neither a pad token nor an eos token; set tokenizer.pad_token")
    from transformers import GenerationConfig

    config = GenerationConfig(
        max_new_tokens=settings.max_new_tokens,
        do_sample=False,
        num_beams=1,
        pad_token_id=pad_id,
        eos_token_id=stops or None,
    )
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    order = sorted(range(len(encoded)), key=lambda i: (-len(encoded[i]), i))
    batches = [order[s : s + settings.batch_size] for s in range(0, len(order), settings.batch_size)]
    device = model_device(model)
    outputs: list[str] = [""] * len(encoded)
    with eval_mode(model):
        for batch in tqdm(batches, desc="generate", disable=not progress):
            width = max(len(encoded[i]) for i in batch)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            att = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                n = len(encoded[i])
                ids[row, width - n :] = torch.tensor(encoded[i], dtype=torch.long)
                att[row, width - n :] = 1
            out = model.generate(input_ids=ids.to(device), attention_mask=att.to(device), generation_config=config)
            for row, i in enumerate(batch):
                new = out[row, width:].tolist()
                cut = next((k for k, t in enumerate(new) if t in stops), len(new))
                outputs[i] = tokenizer.decode(new[:cut], skip_special_tokens=True)
    return outputs
