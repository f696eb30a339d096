"""How to compute the loss of one example and of one preference pair: the only model-specific hook.

Every per-example quantity (losses, gradients, features) goes through a task's ``losses`` method,
which returns one loss per row so that summing it gives each example's own gradient.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from gradsift.data.tokenize import IGNORE, Encoded, bucket_batches, collate
from gradsift.progress import progress

Reduction = Literal["mean", "sum"]


def token_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of the label tokens.

    Args:
        logits: [B, T, V] model outputs.
        labels: [B, T] targets, -100 where no loss applies (not yet shifted).

    Returns:
        ``logps`` [B, T-1] log-probability of each next token (0 where masked) and
        ``mask`` [B, T-1] float, 1 where a loss applies.
    """
    logits = logits[:, :-1, :]
    target = labels[:, 1:]
    mask = target != IGNORE
    safe = target.masked_fill(~mask, 0)
    logps = torch.log_softmax(logits.float(), dim=-1).gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return logps * mask, mask.float()


def _decoder_and_head(model: Any) -> tuple[Any, Any]:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    get_dec = getattr(base, "get_decoder", None)
    get_head = getattr(base, "get_output_embeddings", None)
    if get_dec is None or get_head is None:
        return None, None
    return get_dec(), get_head()


def sequence_logps(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probability of each row's label tokens and their count.

    The output head runs only on the positions that carry a loss (the prompt's logits are never
    built), which saves most of the head's cost on long prompts with a large vocabulary.

    Returns:
        ``sum_logp`` [B] and ``n_tokens`` [B].
    """
    att = batch["attention_mask"]
    labels = batch["labels"]
    # positions count real tokens only, so left padding gives the same result as no padding
    pos = (att.long().cumsum(-1) - 1).clamp(min=0)
    decoder, head = _decoder_and_head(model)
    if decoder is None or head is None:
        out = model(input_ids=batch["input_ids"], attention_mask=att, position_ids=pos)
        logps, mask = token_logps(out.logits, labels)
        return logps.sum(-1), mask.sum(-1)
    hidden = decoder(input_ids=batch["input_ids"], attention_mask=att, position_ids=pos).last_hidden_state
    target = labels[:, 1:]
    mask = target != IGNORE
    rows, cols = mask.nonzero(as_tuple=True)
    logits = head(hidden[:, :-1][rows, cols]).float()  # [n_loss_tokens, V]
    cap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    nll = F.cross_entropy(logits, target[rows, cols], reduction="none")
    sum_logp = torch.zeros(labels.shape[0], dtype=nll.dtype, device=nll.device).index_add(0, rows, -nll)
    return sum_logp, mask.sum(-1).to(nll.dtype)


def adapter_disabled(model: Any):
    """Context in which a peft model runs without its adapter (the reference model of DPO)."""
    return model.disable_adapter() if hasattr(model, "disable_adapter") else nullcontext()


@dataclass
class SFTTask:
    """Supervised loss of one example: negative log-likelihood of its response tokens.

    Attributes:
        reduction: ``"mean"`` (token-mean, LESS's and PRISM's ``lbar``) or ``"sum"`` (summed sequence loss).
    """

    reduction: Reduction = "mean"

    def losses(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-row loss [B] for a padded batch (``input_ids``, ``attention_mask``, ``labels``)."""
        sum_logp, n = sequence_logps(model, batch)
        if self.reduction == "sum":
            return -sum_logp
        return -sum_logp / n.clamp(min=1)


@dataclass
class DPOTask:
    """DPO loss of one pair, ``-log sigmoid(beta * margin)`` with the implicit reward margin

    ``margin = (log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x))``
    (summed token log-probabilities, as TRL's sigmoid loss). The reference is the same model with
    its adapter disabled, so no second copy of the weights is held.

    Batches hold the chosen rows first and the rejected rows after them: rows ``i`` and ``B + i``
    are pair ``i``; optional ``ref_logps`` [2B] skips the reference pass.
    """

    beta: float = 0.1

    def __post_init__(self) -> None:
        if not self.beta > 0:
            raise ValueError(f"beta must be positive, got {self.beta}")

    def reference_logps(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Summed log-probabilities [2B] under the reference (adapter off), without gradient."""
        with torch.no_grad(), adapter_disabled(model):
            return sequence_logps(model, batch)[0]

    def margins(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Implicit reward margin [B] (without the factor beta)."""
        ref = batch.get("ref_logps")
        if ref is None:
            ref = self.reference_logps(model, batch)
        pol = sequence_logps(model, batch)[0]
        b = pol.shape[0] // 2
        return (pol[:b] - ref[:b]) - (pol[b:] - ref[b:])

    def losses(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-pair DPO loss [B]."""
        return -F.logsigmoid(self.beta * self.margins(model, batch))


@torch.no_grad()
def pair_logps(
    model: Any,
    encoded: Sequence[tuple[Encoded, Encoded]],
    pad_id: int,
    batch_tokens: int,
    max_batch: int = 64,
    desc: str = "log-probs",
) -> np.ndarray:
    """Summed log-probabilities of each pair's chosen and rejected response tokens, forward only.

    Batches as `gradsift.gradients.extract` does: chosen rows first, then rejected rows.

    Args:
        model: Causal LM or peft model (with whatever adapter is active), in eval mode.
        encoded: Tokenised pairs from `encode_pairs`.
        pad_id: Padding token id.
        batch_tokens: Padded tokens per batch (both rows of a pair count).
        max_batch: Most pairs per batch.
        desc: Progress bar label.

    Returns:
        float64 [N, 2]: ``log pi(y_w|x)`` and ``log pi(y_l|x)``.
    """
    device = next(model.parameters()).device
    out = np.zeros((len(encoded), 2))
    lengths = [2 * max(len(c), len(r)) for c, r in encoded]
    with progress(len(encoded), desc, "pair") as bar:
        for idx in bucket_batches(lengths, batch_tokens, max_batch):
            items = [encoded[i][0] for i in idx] + [encoded[i][1] for i in idx]
            batch = {k: v.to(device) for k, v in collate(items, pad_id).items()}
            lp = sequence_logps(model, batch)[0].double().cpu().numpy()
            out[idx, 0], out[idx, 1] = lp[: len(idx)], lp[len(idx) :]
            bar.update(len(idx))
    return out
