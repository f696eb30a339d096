"""Length baseline: prefer longer responses (longer answers carry more supervision)."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np


def length_scores(lengths: Any, order: Literal["long", "short"] = "long") -> np.ndarray:
    """Score each candidate by its response length.

    Args:
        lengths: Response lengths [N] (loss tokens, or characters when no tokenizer is at hand).
        order: ``"long"`` ranks the longest first, ``"short"`` the shortest (the negated length).

    Returns:
        float64 [N].

    Raises:
        ValueError: On an unknown order.
    """
    if order not in ("long", "short"):
        raise ValueError(f"length_order must be 'long' or 'short', got {order!r}")
    sign = -1.0 if order == "short" else 1.0
    return sign * np.asarray(lengths, dtype=np.float64)
