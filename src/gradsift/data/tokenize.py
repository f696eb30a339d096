"""Tokenisation with a response-only loss mask, truncation and length-bucketed batching.

Format: the tokenizer's chat template when it has one, else a plain
"### User:/### Assistant:" layout. Loss tokens: every assistant turn (the end-of-turn
marker included, so the model learns to stop).

Truncation policy (gradsift's choice, option `truncation`):
  - ``"right"`` (default): keep the first `max_length` tokens. If that leaves no loss token
    (a prompt longer than `max_length`), the prompt is cut from the left instead so that the
    first ``min(len(response), max_length // 2)`` response tokens remain.
  - ``"left"``: keep the last `max_length` tokens (the end of the response is always kept).
Every truncated example is counted in :class:`EncodeStats`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from gradsift.data.records import Example, Pair

if TYPE_CHECKING:
    import torch

IGNORE = -100
Truncation = Literal["right", "left"]


@dataclass
class Encoded:
    """One tokenised sequence.

    Attributes:
        input_ids: Token ids, length T.
        labels: Same length; the token id where the loss applies, -100 elsewhere.
        truncated: Whether truncation removed tokens.
    """

    input_ids: list[int]
    labels: list[int]
    truncated: bool = False

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def n_loss_tokens(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE)


@dataclass
class EncodeStats:
    """Counts from encoding a data set."""

    n: int = 0
    n_truncated: int = 0
    truncated_ids: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"n": self.n, "n_truncated": self.n_truncated, "truncated_ids": self.truncated_ids[:50]}


def segments(tokenizer: Any, messages: list[dict[str, str]]) -> list[tuple[str, bool]]:
    """Split a rendered chat into `(text, is_loss)` segments.

    The texts, joined, are the chat as the tokenizer's template renders it (or gradsift's plain
    ``### User:`` / ``### Assistant:`` layout without a template); ``is_loss`` marks each assistant turn's
    response, end-of-turn marker included.

    Args:
        tokenizer: The model's tokenizer.
        messages: Chat turns ``{"role", "content"}``.

    Returns:
        The segments in order.

    Raises:
        ValueError: The chat template does not render conversations prefix by prefix.
    """
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        segs: list[tuple[str, bool]] = []
        for m in messages:
            head = f"### {m['role'].capitalize()}:\n"
            if m["role"] == "assistant":
                segs.append((head, False))
                segs.append((m["content"] + (tokenizer.eos_token or "") + "\n\n", True))
            else:
                segs.append((head + m["content"] + "\n\n", False))
        return segs

    def render(msgs: list[dict[str, str]], gen: bool) -> str:
        if not msgs:
            return ""
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)

    segs = []
    prev = ""
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        pre = render(messages[:i], True)
        full = render(messages[: i + 1], False)
        if not pre.startswith(prev) or not full.startswith(pre):
            raise ValueError(
                "the tokenizer's chat template does not render conversations prefix by prefix; "
                "pass a tokenizer with a standard template or remove its chat_template to use the plain format"
            )
        segs.append((pre[len(prev) :], False))
        segs.append((full[len(pre) :], True))
        prev = full
    final = render(messages, False)
    if final.startswith(prev) and len(final) > len(prev):
        segs.append((final[len(prev) :], False))
    return segs


def _tokenize_segments(tokenizer: Any, segs: list[tuple[str, bool]]) -> tuple[list[int], list[bool]]:
    text = "".join(s for s, _ in segs)
    templated = bool(getattr(tokenizer, "chat_template", None))
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, add_special_tokens=not templated, return_offsets_mapping=True)
        spans = []
        pos = 0
        for s, is_loss in segs:
            if is_loss:
                spans.append((pos, pos + len(s)))
            pos += len(s)
        ids = list(enc["input_ids"])
        mask = []
        for start, end in enc["offset_mapping"]:
            # special tokens added by the tokenizer have empty spans and carry no loss
            mask.append(end > start and any(a <= start < b for a, b in spans))
        return ids, mask
    ids, mask = [], []
    for i, (s, is_loss) in enumerate(segs):
        part = tokenizer(s, add_special_tokens=(i == 0 and not templated))["input_ids"]
        ids.extend(part)
        mask.extend([is_loss] * len(part))
    return ids, mask


def encode_messages(
    tokenizer: Any, messages: list[dict[str, str]], max_length: int, truncation: Truncation = "right"
) -> Encoded:
    """Tokenise a chat with loss on its assistant turns.

    Args:
        tokenizer: A Hugging Face tokenizer.
        messages: Chat turns; at least one assistant turn.
        max_length: Maximum number of tokens.
        truncation: ``"right"`` or ``"left"`` (see module docstring).

    Returns:
        The encoded sequence, at most `max_length` tokens.
    """
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2, got {max_length}")
    ids, mask = _tokenize_segments(tokenizer, segments(tokenizer, messages))
    truncated = len(ids) > max_length
    if truncated:
        if truncation == "left":
            ids, mask = ids[-max_length:], mask[-max_length:]
        else:
            first_loss = next((i for i, m in enumerate(mask) if m), len(ids))
            if first_loss < max_length - 1:
                ids, mask = ids[:max_length], mask[:max_length]
            else:
                keep_resp = min(sum(mask[first_loss:]), max_length // 2)
                keep_prompt = max_length - keep_resp
                ids = ids[first_loss - keep_prompt : first_loss] + ids[first_loss : first_loss + keep_resp]
                mask = mask[first_loss - keep_prompt : first_loss] + mask[first_loss : first_loss + keep_resp]
    labels = [t if m else IGNORE for t, m in zip(ids, mask, strict=True)]
    return Encoded(input_ids=ids, labels=labels, truncated=truncated)


def encode_examples(
    tokenizer: Any,
    examples: Sequence[Example],
    max_length: int,
    truncation: Truncation = "right",
    response: Literal["chosen", "rejected"] = "chosen",
) -> tuple[list[Encoded], EncodeStats]:
    """Tokenise examples; with ``response="rejected"`` the last assistant turn is replaced by `rejected`.

    Raises:
        ValueError: `response="rejected"` and an example has no `rejected` field.
    """
    out, stats = [], EncodeStats()
    for ex in examples:
        msgs = ex.messages
        if response == "rejected":
            if ex.rejected is None:
                raise ValueError(
                    f"{ex.source}, line {ex.line}, field 'rejected': example {ex.id} has no rejected response"
                )
            msgs = ex.prompt_messages + [{"role": "assistant", "content": ex.rejected}]
        enc = encode_messages(tokenizer, msgs, max_length, truncation)
        stats.n += 1
        if enc.truncated:
            stats.n_truncated += 1
            stats.truncated_ids.append(ex.id)
        out.append(enc)
    return out, stats


def encode_pairs(
    tokenizer: Any, pairs: Sequence[Pair], max_length: int, truncation: Truncation = "right"
) -> tuple[list[tuple[Encoded, Encoded]], EncodeStats]:
    """Tokenise preference pairs as (prompt + chosen, prompt + rejected)."""
    out, stats = [], EncodeStats()
    for p in pairs:
        c = encode_messages(tokenizer, p.prompt + [{"role": "assistant", "content": p.chosen}], max_length, truncation)
        r = encode_messages(
            tokenizer, p.prompt + [{"role": "assistant", "content": p.rejected}], max_length, truncation
        )
        stats.n += 1
        if c.truncated or r.truncated:
            stats.n_truncated += 1
            stats.truncated_ids.append(p.id)
        out.append((c, r))
    return out, stats


def collate(
    items: Sequence[Encoded], pad_id: int, padding_side: Literal["right", "left"] = "right"
) -> dict[str, torch.Tensor]:
    """Pad a batch.

    Returns:
        ``input_ids`` [B, T] long, ``attention_mask`` [B, T] long, ``labels`` [B, T] long (-100 on padding).
    """
    import torch  # here: reading and tokenising data needs no torch

    width = max(len(e) for e in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    att = torch.zeros((len(items), width), dtype=torch.long)
    lab = torch.full((len(items), width), IGNORE, dtype=torch.long)
    for i, e in enumerate(items):
        n = len(e)
        sl = slice(0, n) if padding_side == "right" else slice(width - n, width)
        ids[i, sl] = torch.tensor(e.input_ids)
        att[i, sl] = 1
        lab[i, sl] = torch.tensor(e.labels)
    return {"input_ids": ids, "attention_mask": att, "labels": lab}


def bucket_batches(lengths: Sequence[int], max_tokens: int, max_batch: int = 64) -> list[list[int]]:
    """Group indices into batches of similar length.

    Sorts by length (longest first, so an out-of-memory shows up in the first batch) and cuts a
    batch when its padded size ``batch_size * longest`` would exceed `max_tokens`.

    Returns:
        Lists of original indices; every index appears exactly once.
    """
    if max_tokens < 1 or max_batch < 1:
        raise ValueError("max_tokens and max_batch must be positive")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    cur: list[int] = []
    longest = 0
    for i in order:
        new_longest = max(longest, lengths[i])
        if cur and (len(cur) + 1 > max_batch or (len(cur) + 1) * new_longest > max_tokens):
            batches.append(cur)
            cur, new_longest = [], lengths[i]
        cur.append(i)
        longest = new_longest
    if cur:
        batches.append(cur)
    return batches
