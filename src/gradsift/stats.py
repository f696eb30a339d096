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


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman rank correlation over the rows where both are finite (None when fewer than 3 such rows)."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return None
    rho = spearmanr(a[ok], b[ok]).statistic
    return float(rho) if np.isfinite(rho) else None
