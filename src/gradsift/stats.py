"""Small statistics shared by selection, benchmarks and reports: overlap of selections, task shares, ranks.

Everything here takes plain sequences or arrays and imports nothing of gradsift's, so every floor may use it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np


def jaccard(a: Sequence[int], b: Sequence[int]) -> float:
    """Jaccard index |A & B| / |A | B| of two selections (1.0 when both are empty).

    Example:
        >>> jaccard([1, 2, 3], [3, 4])
        0.25
    """
    sa, sb = set(a), set(b)
    union = len(sa | sb)
    return len(sa & sb) / union if union else 1.0


def overlap(a: Sequence[int], b: Sequence[int]) -> dict[str, Any]:
    """How much two selections agree: shared rows, Jaccard index, and the share of each inside the other."""
    sa, sb = set(a), set(b)
    shared = len(sa & sb)
    return {
        "n_a": len(sa),
        "n_b": len(sb),
        "shared": shared,
        "jaccard": jaccard(a, b),
        "share_of_a": shared / len(sa) if sa else None,
        "share_of_b": shared / len(sb) if sb else None,
    }


def jaccard_matrix(selections: Sequence[Sequence[int]]) -> np.ndarray:
    """Pairwise Jaccard index of M selections: [M, M] float64, 1 on the diagonal."""
    m = np.ones((len(selections), len(selections)))
    for i, a in enumerate(selections):
        for j, b in enumerate(selections):
            if i != j:
                m[i, j] = jaccard(a, b)
    return m


def expected_random_jaccard(n: int, k: int) -> float | None:
    """Expected Jaccard index of two independent uniform draws of `k` of `n` rows (None when undefined)."""
    if n <= 0 or k <= 0:
        return None
    inter = k * k / n
    return inter / (2 * k - inter)


def task_shares(tasks: Sequence[str | None], rows: Sequence[int]) -> dict[str, dict[str, float]]:
    """Share of each task label among `rows` and in the whole pool (label None counts as ``"(none)"``).

    Returns:
        ``{task: {"pool": share, "selected": share, "n_selected": count}}`` for every task in the pool.
    """
    pool = Counter(t or "(none)" for t in tasks)
    sel = Counter(tasks[i] or "(none)" for i in rows)
    n, k = len(tasks), max(len(rows), 1)
    return {t: {"pool": pool[t] / n, "selected": sel.get(t, 0) / k, "n_selected": sel.get(t, 0)} for t in pool}


def average_ranks(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """1-based ranks of `values` [N], tied values sharing the mean of their ranks (scipy's ``rankdata``
    ``average``), in numpy alone: O(N log N), no scipy import.

    Example:
        >>> average_ranks([3.0, 1.0, 3.0, 2.0]).tolist()
        [3.5, 1.0, 3.5, 2.0]
    """
    v = np.asarray(values, dtype=np.float64)
    order = np.argsort(v, kind="stable")
    ordered = v[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]]) if len(v) else np.zeros(0, dtype=np.int64)
    ends = np.r_[starts[1:], len(v)]
    ranks = np.empty(len(v))
    # a tie group holding sorted positions start..end-1 shares rank (start + 1 + end) / 2
    ranks[order] = np.repeat((starts + 1 + ends) / 2.0, ends - starts)
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman rank correlation over the rows where both are finite: the Pearson correlation of their
    `average_ranks` (None when fewer than 3 such rows, or when either is constant there)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return None
    ra, rb = average_ranks(a[ok]), average_ranks(b[ok])
    ra -= ra.mean()
    rb -= rb.mean()
    denom = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / denom) if denom > 0 else None
