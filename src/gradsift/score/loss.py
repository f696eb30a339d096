"""Loss and perplexity baselines: each candidate's response loss under the model.

``order`` (gradsift's choice, option ``loss_order``): ``"high"`` (default) keeps the examples the model finds
hardest; ``"low"`` keeps the most likely ones (perplexity filtering for quality). The losses themselves come
from the model (`gradsift.recipes.baselines.per_example_losses`).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np


def loss_scores(loss: Any, perplexity: bool = False, order: Literal["high", "low"] = "high") -> np.ndarray:
    """Score each candidate by its loss or perplexity.

    Args:
        loss: Token-mean response losses [N]; NaN for examples with no loss token (they stay NaN).
        perplexity: Score ``exp(loss)`` instead of the loss (the same order, another scale).
        order: ``"high"`` ranks high losses first, ``"low"`` low losses first (the negated value).

    Returns:
        float64 [N].

    Raises:
        ValueError: On an unknown order.
    """
    if order not in ("high", "low"):
        raise ValueError(f"loss_order must be 'high' or 'low', got {order!r}")
    loss = np.asarray(loss, dtype=np.float64)
    value = np.exp(loss) if perplexity else loss
    sign = -1.0 if order == "low" else 1.0
    return sign * value
