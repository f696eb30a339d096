"""Small statistics shared by selection, benchmarks and reports: overlap of selections, task shares, ranks,
bootstrap intervals of paired differences.

Everything here takes plain sequences or arrays and imports nothing of gradsift's, so every floor may use it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Interval:
    """A mean with its bootstrap percentile interval.

    Attributes:
        value: The point estimate (mean over examples of the seed-averaged values or differences).
        low: Lower end of the interval.
        high: Upper end of the interval.
    """

    value: float
    low: float
    high: float

    def excludes_zero(self) -> bool:
        """Whether the interval lies entirely above or entirely below 0."""
        return self.low > 0 or self.high < 0


def bootstrap_draws(
    n_examples: int, seeds: Sequence[int], n_boot: int, rng: np.random.Generator
) -> tuple[np.ndarray, list[np.ndarray]]:
    """The random draws of `paired_bootstrap`: example indices [n_boot, N] and, per group, seed indices
    [n_boot, S_g], drawn in that order from `rng` (examples first, then each group)."""
    examples = rng.integers(0, n_examples, size=(n_boot, n_examples))
    picks = [rng.integers(0, s, size=(n_boot, s)) for s in seeds]
    return examples, picks


def paired_bootstrap(
    a: np.ndarray,
    b: np.ndarray | None = None,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    resample_seeds: bool = True,
) -> Interval:
    """Mean per-example value of `a` (or difference `a - b`, paired on the same examples), averaged over
    seeds, with a bootstrap percentile interval.

    Each replicate draws the N examples with replacement (the same draw for `a` and `b`, so the pairing is
    kept) and, with `resample_seeds`, each group's S training seeds with replacement, independently for `a`
    and `b`: the interval then covers both which examples were evaluated and seed-to-seed training variation.

    Args:
        a: Per-seed, per-example values [S_a, N] (or [N] for one seed).
        b: The reference's values on the same examples [S_b, N], or None for the mean of `a` alone.
        n_boot: Bootstrap replicates.
        seed: Seed of the draws (same seed, same interval).
        level: Coverage of the interval, in (0, 1).
        resample_seeds: Also resample the seeds of each group (no effect with one seed).

    Returns:
        The mean of ``a.mean(0) - b.mean(0)`` over examples and its interval; a value within 1e-9 of the
        largest |value| in `a` and `b` is returned as exactly 0 (float rounding residue, not a difference).

    Raises:
        ValueError: Shapes that do not pair, no examples, non-finite values, or `level`/`n_boot` out of range.
    """
    groups = [np.atleast_2d(np.asarray(a, dtype=np.float64))]
    if b is not None:
        groups.append(np.atleast_2d(np.asarray(b, dtype=np.float64)))
    n = groups[0].shape[1]
    if any(g.ndim != 2 or g.shape[1] != n or g.shape[0] < 1 for g in groups) or n < 1:
        raise ValueError(f"values must be [seeds, examples] on the same examples, got {[g.shape for g in groups]}")
    if not all(np.isfinite(g).all() for g in groups):
        raise ValueError("values must be finite")
    if not 0 < level < 1 or n_boot < 1:
        raise ValueError(f"need 0 < level < 1 and n_boot >= 1, got level={level}, n_boot={n_boot}")
    sign = [1.0, -1.0]
    point = sum(s * g.mean(0) for s, g in zip(sign, groups, strict=False)).mean()
    rng = np.random.default_rng(seed)
    examples, picks = bootstrap_draws(n, [g.shape[0] for g in groups], n_boot, rng)
    per_example = np.zeros((n_boot, n))
    for s, g, pick in zip(sign, groups, picks, strict=False):
        if resample_seeds:
            # weights [B, S]: how often each seed was drawn, over S; their product with g is the resampled mean
            counts = np.zeros((n_boot, g.shape[0]))
            np.add.at(counts, (np.arange(n_boot)[:, None], pick), 1.0)
            per_example += s * (counts / g.shape[0]) @ g
        else:
            per_example += s * g.mean(0)
    replicates = np.take_along_axis(per_example, examples, axis=1).mean(1)
    tail = (1 - level) / 2
    low, high = np.quantile(replicates, [tail, 1 - tail])
    # Seed weights (1/S) and means over examples leave a residue of ~1e-17 where the exact value is 0 (a
    # replicate of a 0/1 metric such as refusal); read as a bound, it would put 0 outside the interval.
    tol = 1e-9 * max(float(np.abs(g).max()) for g in groups)
    point, low, high = (0.0 if abs(x) <= tol else float(x) for x in (point, low, high))
    return Interval(point, low, high)
