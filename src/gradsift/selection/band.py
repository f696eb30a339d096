"""Middle percentile bands of a score, as TIF and error-complementary fusion keep them (methods.md section 3).

gradsift's choices:

- The band is the closed interval ``[q_lo, q_hi]`` between the `lo`-th and `hi`-th percentiles (numpy's default
  linear interpolation) of the finite scores. Closed, so that ``lo=0, hi=100`` keeps every usable row and scores
  tied at a limit are all kept or all dropped together, never split by row order.
- `select_pairs` mode (`PrefMode`): ``band`` selects the band members; ``topk`` the highest values instead (with
  several columns, as in the fusion, top-k ranks pairs by the lower of their percentile ranks, the intersection
  of the upper bands).
- Order within the band, up to the budget (`BandOrder`): ``centre`` takes the pairs whose percentile rank lies
  closest to the band's centre ``(lo + hi) / 2`` first, i.e. a narrower band with the same centre (several
  columns: the largest of the distances, i.e. the intersection of narrower bands); ``high`` takes the highest
  percentile rank first (several columns: the lowest of the ranks). A band with fewer pairs than the budget is
  selected whole and the shortfall is reported in ``info``.
- Without a budget (None, or 0) band mode keeps the whole band, as the papers do (TIF's fusion keeps about 60%
  of the pool); a budget cuts the band, in the order above. ``info["band_size"]`` is the band's size either way.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np

from gradsift.selection.topk import eligible_mask, rank_order, top_k

log = logging.getLogger(__name__)


class PrefMode(StrEnum):
    """How a preference score becomes a selection."""

    BAND = "band"
    TOPK = "topk"


class BandOrder(StrEnum):
    """Which band members come first when the band holds more pairs than the budget."""

    CENTRE = "centre"
    HIGH = "high"


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


def percentile_ranks(values: np.ndarray) -> np.ndarray:
    """Mid-rank percentile of each finite value among the finite values, in (0, 100); NaN elsewhere.

    Ties share their average rank, so tied values are never split by row order.
    """
    from scipy.stats import rankdata

    v = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(v)
    out = np.full(len(v), np.nan)
    if ok.any():
        out[ok] = 100.0 * (rankdata(v[ok], method="average") - 0.5) / int(ok.sum())
    return out


@dataclass(frozen=True)
class PreferenceSelection:
    """A band or top-k selection over one or more score columns.

    Attributes:
        score: [N] priority, higher first (NaN: never selected); ``top_k(score, budget)`` gives `selected`.
        selected: Row indices in selection order.
        in_band: Name -> bool [N]: each column's middle band; ``"all"``: their intersection.
        info: Band limits, counts and shortfall, JSON-serialisable.
    """

    score: np.ndarray
    selected: list[int]
    in_band: dict[str, np.ndarray]
    info: dict[str, Any]


def select_pairs(
    columns: Mapping[str, np.ndarray],
    budget: int | None,
    lo: float = 20.0,
    hi: float = 80.0,
    mode: PrefMode | str = PrefMode.BAND,
    order: BandOrder | str = BandOrder.CENTRE,
) -> PreferenceSelection:
    """Select pairs by the middle bands of one score (TIF, LossDiff, IRM) or several (fusion: intersection).

    Args:
        columns: Name -> values [N] (NaN for pairs that could not be scored; they are never selected).
        budget: Pairs to select; None (or 0) keeps the whole band (band mode only).
        lo: Lower band percentile.
        hi: Upper band percentile.
        mode: ``band`` or ``topk`` (module docstring).
        order: Order of the band members: ``centre`` or ``high``.

    Returns:
        The selection.

    Raises:
        ValueError: No columns, columns of different lengths, a bad band, a negative budget, top-k without a
            budget, or no finite value in a column.
    """
    mode, order = PrefMode(mode), BandOrder(order)
    if not columns:
        raise ValueError("no score column to select by")
    cols = {k: np.asarray(v, dtype=np.float64) for k, v in columns.items()}
    n = {len(v) for v in cols.values()}
    if len(n) != 1 or 0 in n or any(v.ndim != 1 for v in cols.values()):
        raise ValueError(f"score columns must be 1-D of one non-zero length, got {[v.shape for v in cols.values()]}")
    if budget is not None and budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    ranks = np.stack([percentile_ranks(v) for v in cols.values()])  # [C, N]
    in_band = {k: percentile_band(v, lo, hi) for k, v in cols.items()}
    both = np.logical_and.reduce(list(in_band.values()))
    in_band["all"] = both
    info: dict[str, Any] = {
        "mode": mode.value,
        "band": {"lo": lo, "hi": hi, "limits": {k: list(band_limits(v, lo, hi)) for k, v in cols.items()}},
        "n_scored": int(np.isfinite(ranks).all(axis=0).sum()),
        "n_in_band": {k: int(m.sum()) for k, m in in_band.items()},
        "band_size": int(both.sum()),
        "budget": budget,
    }
    with np.errstate(invalid="ignore"):
        lowest = ranks.min(axis=0)  # NaN where any column is NaN
    if mode is PrefMode.TOPK:
        if not budget:
            raise ValueError("top-k selection needs a budget of at least 1")
        score = cols[next(iter(cols))] if len(cols) == 1 else lowest
        selected = top_k(score, budget).indices
    else:
        info["order"] = order.value
        if order is BandOrder.CENTRE:
            centre = (lo + hi) / 2
            priority = -np.abs(ranks - centre).max(axis=0)
        else:
            priority = lowest
        score = np.where(both, priority, np.nan)
        members = rank_order(score, np.flatnonzero(both))
        selected = (members[:budget] if budget else members).tolist()
        if budget and budget > len(members):
            info["shortfall"] = budget - len(members)
            log.warning("the band holds %d pairs, fewer than the budget %d: all are selected", len(members), budget)
    info["n_selected"] = len(selected)
    return PreferenceSelection(
        score=np.asarray(score, dtype=np.float64), selected=selected, in_band=in_band, info=info
    )
