"""Deterministic top-k selection, overall or with per-task quotas.

Order: score descending, ties broken by row index ascending, so a selection never depends on the sort
algorithm or the platform. Rows flagged bad, and rows whose score is not finite (NaN, and the ``-inf`` the
scorers give bad rows), are never selected and are reported in `Selection.excluded`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from gradsift.score.influence import bad_mask
from gradsift.selection.budget import Budget


@dataclass(frozen=True)
class Selection:
    """A selection from a pool of N candidates.

    Attributes:
        indices: Selected row indices in selection order (best first; BIDS: the order it added them).
        budget: The number of rows asked for (the resolved budget).
        excluded: Rows that could not be selected (bad or non-finite score), ascending.
    """

    indices: list[int]
    budget: int
    excluded: list[int]

    def __post_init__(self) -> None:
        if len(set(self.indices)) != len(self.indices):
            raise ValueError("a selection cannot hold a row twice")
        if len(self.indices) > self.budget:
            raise ValueError(f"selection of {len(self.indices)} rows exceeds its budget {self.budget}")

    @property
    def shortfall(self) -> int:
        """How many fewer rows were selected than asked for (too few eligible rows)."""
        return self.budget - len(self.indices)

    def mask(self, n_total: int) -> np.ndarray:
        """bool [n_total]: True for selected rows."""
        out = np.zeros(n_total, dtype=bool)
        out[self.indices] = True
        return out


def eligible_mask(scores: Any, bad: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Scores as float64 [N] and the mask of rows that may be selected (not bad, finite score).

    Raises:
        ValueError: If `scores` is not 1-D and non-empty, or `bad` is not a boolean mask [N].
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or len(s) == 0:
        raise ValueError(f"scores must be a non-empty 1-D array, got shape {s.shape}")
    return s, np.isfinite(s) & ~bad_mask(bad, len(s))


def rank_order(scores: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """`rows` sorted by score descending, then row index ascending."""
    return rows[np.lexsort((rows, -scores[rows]))]


def top_k(scores: Any, budget: Budget | int | float | str, bad: Any = None) -> Selection:
    """The `budget` best rows by score.

    Args:
        scores: Scores [N], higher is better.
        budget: A `Budget` or anything `Budget.parse` reads; fractions are of the whole pool N.
        bad: Optional boolean mask [N] of rows that must not be selected.

    Returns:
        The selection, best first. Fewer rows than the budget when fewer are eligible (see `shortfall`).

    Raises:
        ValueError: On malformed scores, mask or budget.
    """
    s, ok = eligible_mask(scores, bad)
    k = Budget.parse(budget).resolve(len(s))
    order = rank_order(s, np.flatnonzero(ok))
    return Selection(order[:k].tolist(), k, np.flatnonzero(~ok).tolist())


def top_k_per_task(
    scores: Any,
    groups: Sequence[Hashable],
    budget: Budget | int | float | str | None = None,
    quotas: Mapping[Hashable, int] | None = None,
    bad: Any = None,
) -> Selection:
    """The best rows within each task group: fixed quotas, or the budget split in proportion to the pool.

    With `budget`, group g gets ``B * n_g / E`` rows, with ``n_g`` its eligible rows and ``E`` all eligible
    rows, rounded by largest remainders (Hamilton's method; equal remainders favour the group seen first),
    so the quotas sum to ``min(B, E)`` and never exceed a group's size. With `quotas`, each named group
    gets its quota (or all its eligible rows, if fewer); groups not named get none.

    Args:
        scores: Scores [N], higher is better.
        groups: Task label of each candidate [N] (None is a label like any other).
        budget: Total budget (a `Budget` or anything `Budget.parse` reads). Give this or `quotas`.
        quotas: Rows per task label, each >= 0. Give this or `budget`.
        bad: Optional boolean mask [N] of rows that must not be selected.

    Returns:
        The selection ordered by score descending then row index, with ``budget`` the total asked for.

    Raises:
        ValueError: On malformed inputs, both or neither of `budget` and `quotas`, a negative quota, or a
            quota for a label no candidate has.
    """
    s, ok = eligible_mask(scores, bad)
    labels = list(groups)
    if len(labels) != len(s):
        raise ValueError(f"got {len(labels)} task labels for {len(s)} candidates")
    if (budget is None) == (quotas is None):
        raise ValueError("give exactly one of budget (split in proportion to the pool) and quotas (per task)")
    position: dict[Hashable, int] = {}
    index = np.array([position.setdefault(label, len(position)) for label in labels], dtype=np.int64)
    names = list(position)
    eligible = np.bincount(index[ok], minlength=len(names))
    if quotas is not None:
        unknown = [t for t in quotas if t not in position]
        if unknown:
            raise ValueError(f"quotas name tasks no candidate has: {unknown}; candidate tasks are {names}")
        invalid = {t: q for t, q in quotas.items() if not _is_count(q)}
        if invalid:
            raise ValueError(f"quotas must be integers >= 0, got {invalid}")
        asked = [int(quotas.get(t, 0)) for t in names]
        total = sum(asked)
        if total < 1:
            raise ValueError("quotas select nothing: give at least one task a quota >= 1")
    else:
        total = Budget.parse(budget).resolve(len(s))  # type: ignore[arg-type]
        asked = proportional_quotas(min(total, int(eligible.sum())), eligible.tolist())
    chosen = []
    for g, quota in enumerate(asked):
        rows = np.flatnonzero(ok & (index == g))
        chosen.append(rank_order(s, rows)[:quota])
    picked = rank_order(s, np.concatenate(chosen))
    return Selection(picked.tolist(), total, np.flatnonzero(~ok).tolist())


def _is_count(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Integral) and int(value) >= 0


def proportional_quotas(total: int, sizes: Sequence[int]) -> list[int]:
    """Split `total` over groups in proportion to `sizes` by largest remainders.

    Args:
        total: Rows to hand out, 0 <= total <= sum(sizes).
        sizes: Group sizes, each >= 0.

    Returns:
        Quotas, one per group, summing to `total`, each at most its group's size; equal remainders go to the
        earlier group.

    Raises:
        ValueError: If `total` is out of range.
    """
    n = sum(sizes)
    if not 0 <= total <= n:
        raise ValueError(f"cannot hand out {total} rows over groups of {n} rows in all")
    if n == 0:
        return [0] * len(sizes)
    exact = [Fraction(total * size, n) for size in sizes]
    quotas = [math.floor(e) for e in exact]
    by_remainder = sorted(range(len(sizes)), key=lambda g: (-(exact[g] - quotas[g]), g))
    for g in by_remainder[: total - sum(quotas)]:
        quotas[g] += 1
    return quotas
