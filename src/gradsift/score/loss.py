"""Loss and perplexity baselines: each candidate's response loss under the model.

``loss_order`` (gradsift's choice, option): ``"high"`` (default) keeps the examples the model finds
hardest; ``"low"`` keeps the most likely ones (perplexity filtering for quality).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from gradsift.data.tokenize import Encoded, bucket_batches, collate
from gradsift.model.task import Reduction, SFTTask
from gradsift.recipes.base import ScoreContext
from gradsift.score.base import Scores


@torch.no_grad()
def per_example_losses(
    model: Any,
    encoded: Sequence[Encoded],
    pad_id: int,
    batch_tokens: int,
    reduction: Reduction = "mean",
    desc: str = "loss",
) -> np.ndarray:
    """Response loss of each example, batched by length.

    Args:
        model: Causal LM (or peft model) on its device.
        encoded: Tokenised examples.
        pad_id: Padding token id.
        batch_tokens: Padded tokens per batch.
        reduction: Token-mean or summed loss.

    Returns:
        [N] float64 losses in the input order; NaN for examples with no loss token.
    """
    device = next(model.parameters()).device
    task = SFTTask(reduction=reduction)
    out = np.full(len(encoded), np.nan)
    batches = bucket_batches([len(e) for e in encoded], batch_tokens)
    for idx in tqdm(batches, desc=desc, unit="batch", leave=False):
        batch = {k: v.to(device) for k, v in collate([encoded[i] for i in idx], pad_id).items()}
        losses = task.losses(model, batch).double().cpu().numpy()
        n_tok = (batch["labels"][:, 1:] != -100).sum(-1).cpu().numpy()
        out[idx] = np.where(n_tok > 0, losses, np.nan)
    return out


class LossScorer:
    """Score = token-mean response loss (or its negative with ``loss_order="low"``)."""

    def __init__(self, perplexity: bool = False):
        self.perplexity = perplexity

    def score(self, ctx: ScoreContext) -> Scores:
        lm = ctx.model
        encoded, stats = ctx.encoded_pool()
        loss = per_example_losses(lm.model, encoded, lm.tokenizer.pad_token_id, ctx.batch_tokens)
        value = np.exp(loss) if self.perplexity else loss
        sign = -1.0 if ctx.options.get("loss_order", "high") == "low" else 1.0
        return Scores(
            score=sign * value,
            columns={"loss": loss, "perplexity": np.exp(loss)},
            info={"truncated": stats.n_truncated, "no_loss_tokens": int(np.isnan(loss).sum())},
        )
