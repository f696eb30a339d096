"""Middle percentile bands of a score, as TIF and error-complementary fusion keep them (methods.md section 3).

gradsift's choice: the band is the closed interval ``[q_lo, q_hi]`` between the `lo`-th and `hi`-th
percentiles (numpy's default linear interpolation) of the finite scores. Closed, so that ``lo=0, hi=100``
keeps every usable row and scores tied at a limit are all kept or all dropped together, never split by
row order.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gradsift.selection.topk import eligible_mask


def band_limits(scores: Any, lo: float = 20.0, hi: float = 80.0, bad: Any = None) -> tuple[float, float]:
    """The percentiles ``(q_lo, q_hi)`` of the usable scores.

    Args:
        scores: Scores [N].
        lo: Lower percentile in [0, 100).
        hi: Upper percentile in (lo, 100].
        bad: Optional boolean mask [N] of rows to leave out (as are non-finite scores).

    Returns:
        The two limits.

    Raises:
        ValueError: On malformed scores or mask, percentiles out of range, or no finite score.
    """
    if not 0 <= lo < hi <= 100:
        raise ValueError(f"percentile band needs 0 <= lo < hi <= 100, got lo={lo}, hi={hi}")
    s, ok = eligible_mask(scores, bad)
    if not ok.any():
        raise ValueError("no usable score to take percentiles of: every row is bad or not finite")
    q_lo, q_hi = np.percentile(s[ok], [lo, hi])
    return float(q_lo), float(q_hi)


def percentile_band(scores: Any, lo: float = 20.0, hi: float = 80.0, bad: Any = None) -> np.ndarray:
    """Rows whose score lies in the middle band ``[q_lo, q_hi]`` (module docstring).

    Args:
        scores: Scores [N].
        lo: Lower percentile in [0, 100) (TIF default 20).
        hi: Upper percentile in (lo, 100] (TIF default 80).
        bad: Optional boolean mask [N] of rows never in the band (as are non-finite scores).

    Returns:
        bool [N].

    Raises:
        ValueError: As `band_limits`.
    """
    q_lo, q_hi = band_limits(scores, lo, hi, bad)
    s, ok = eligible_mask(scores, bad)
    return ok & (s >= q_lo) & (s <= q_hi)
