"""IFD, instruction-following difficulty (Li et al. 2024, "From Quantity to Quality", Cherry LLM).

``IFD(x, y) = lbar(y | x) / lbar(y)``: the token-mean response loss with the instruction divided by
the loss of the response alone. High IFD: the instruction helps little, so the example teaches the
model something. Examples with IFD >= 1 (the instruction does not help at all, often misaligned
pairs) are dropped by default, as in the source (option ``ifd_max``, default 1.0).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def ifd_ratio(loss_with_instruction: Any, loss_alone: Any) -> np.ndarray:
    """``IFD = lbar(y | x) / lbar(y)`` per candidate.

    Args:
        loss_with_instruction: Token-mean response losses with the instruction [N].
        loss_alone: Token-mean losses of the response alone [N].

    Returns:
        float64 [N]; NaN or inf where a loss is NaN or the loss alone is 0 (no warning: such rows are dropped).
    """
    cond = np.asarray(loss_with_instruction, dtype=np.float64)
    direct = np.asarray(loss_alone, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return cond / direct


def ifd_scores(ifd: Any, ifd_max: float = 1.0) -> np.ndarray:
    """IFD as the score, NaN (never selected) for IFD at or above `ifd_max` and for undefined IFD.

    Args:
        ifd: IFD of each candidate [N] (`ifd_ratio`).
        ifd_max: The source's rule drops IFD >= 1: the instruction does not make the response more likely.

    Returns:
        float64 [N].
    """
    ifd = np.asarray(ifd, dtype=np.float64)
    return np.where(ifd < ifd_max, ifd, np.nan)
