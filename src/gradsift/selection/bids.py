"""BIDS: balanced influence across target instances (methods.md section 4; Dai et al. 2025, arXiv 2501.12147).

Input is the influence matrix ``A`` [N, M] of N candidates on M target examples drawn from several target
tasks; with LESS features that is ``gradsift.score.influence.influence_matrix(..., normalize=True)``, the
cosine influence per target example summed over checkpoints with learning-rate weights.

1. Instance-level normalisation: z-score every column over the candidates, ``A_ij <- (A_ij - mean_j) / std_j``
   (population std; a constant column becomes all 0, as it cannot rank anyone).
2. Iterative selection: starting from ``T = {}``, while ``|T| < B`` add
   ``argmax_{i not in T} max_j (A_ij - mean_{k in T} A_kj)`` (the mean is 0 while T is empty). The column
   means come from running sums updated once per pick, so the whole loop costs O(B * N * M).
   Ties go to the lowest row index.

Rows flagged bad, and rows of ``A`` with any non-finite entry, take no part in the column statistics and
are never selected. The task-max (LESS), instance-max and sum selections on the same matrix, and the
per-task coverage of a selection, are here too, to compare how balanced selections are.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gradsift.score.influence import CHUNK_BYTES, TaskGroups, bad_mask
from gradsift.score.less import Aggregation, aggregate
from gradsift.selection.budget import Budget
from gradsift.selection.topk import Selection, top_k


def _matrix(a: Any) -> Any:
    if not hasattr(a, "shape"):
        a = np.asarray(a, dtype=np.float64)
    if len(a.shape) != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"the influence matrix must be 2-D [candidates, targets] and non-empty, got {a.shape}")
    return a


def _rows_per_chunk(m: int, chunk_rows: int | None) -> int:
    if chunk_rows is not None and chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    # Each step makes a float64 [rows, M] temporary.
    return chunk_rows or max(1, CHUNK_BYTES // (8 * m))


def usable_rows(a: Any, bad: Any = None, chunk_rows: int | None = None) -> np.ndarray:
    """bool [N]: rows not flagged bad whose influences are all finite.

    Args:
        a: Influence matrix [N, M] (array or memmap).
        bad: Optional boolean mask [N].
        chunk_rows: Rows read at a time; None picks about 64 MB.

    Raises:
        ValueError: If `a` is not a non-empty 2-D array or `bad` is malformed.
    """
    a = _matrix(a)
    n, m = a.shape
    ok = ~bad_mask(bad, n)
    rows = _rows_per_chunk(m, chunk_rows)
    for start in range(0, n, rows):
        ok[start : start + rows] &= np.isfinite(np.asarray(a[start : start + rows])).all(axis=1)
    return ok


def zscore_columns(a: Any, bad: Any = None, chunk_rows: int | None = None) -> np.ndarray:
    """Instance-level normalisation of BIDS (methods.md section 4).

    Column means and population standard deviations are taken over the usable rows in two passes (mean,
    then squared deviations) in float64, which keeps them accurate for columns far from zero.

    Args:
        a: Influence matrix [N, M] (array or memmap).
        bad: Optional boolean mask [N] of rows to leave out.
        chunk_rows: Rows read at a time; None picks about 64 MB.

    Returns:
        float32 [N, M]; unusable rows are all-NaN, constant columns all 0.

    Raises:
        ValueError: If `a` is malformed or no row is usable.
    """
    a = _matrix(a)
    n, m = a.shape
    ok = usable_rows(a, bad, chunk_rows)
    count = int(ok.sum())
    if count == 0:
        raise ValueError("no usable candidate rows: every row is bad or has non-finite influences")
    rows = _rows_per_chunk(m, chunk_rows)
    total = np.zeros(m)
    for start in range(0, n, rows):
        total += np.asarray(a[start : start + rows], dtype=np.float64)[ok[start : start + rows]].sum(axis=0)
    mean = total / count
    squares = np.zeros(m)
    for start in range(0, n, rows):
        dev = np.asarray(a[start : start + rows], dtype=np.float64)[ok[start : start + rows]] - mean
        squares += (dev * dev).sum(axis=0)
    std = np.sqrt(squares / count)
    scale = np.zeros(m)
    np.divide(1.0, std, out=scale, where=std > 0)
    z = np.empty((n, m), dtype=np.float32)
    for start in range(0, n, rows):
        z[start : start + rows] = (np.asarray(a[start : start + rows], dtype=np.float64) - mean) * scale
    z[~ok] = np.nan
    return z


def bids_select(
    a: Any,
    budget: Budget | int | float | str,
    bad: Any = None,
    normalize: bool = True,
    chunk_rows: int | None = None,
) -> Selection:
    """BIDS iterative selection (methods.md section 4), O(B * N * M) with running column sums.

    Args:
        a: Influence matrix [N, M] (array or memmap), e.g. from `influence_matrix`.
        budget: A `Budget` or anything `Budget.parse` reads; fractions are of the whole pool N.
        bad: Optional boolean mask [N] of rows that must not be selected.
        normalize: z-score the columns first (BIDS); False runs the iteration on `a` as given.
        chunk_rows: Rows per step of each scan; None picks about 64 MB of temporaries.

    Returns:
        The selection in the order BIDS added the rows; fewer than the budget if fewer rows are usable.

    Raises:
        ValueError: On a malformed matrix, mask or budget, or no usable row.
    """
    a = _matrix(a)
    n, m = a.shape
    k = Budget.parse(budget).resolve(n)
    ok = usable_rows(a, bad, chunk_rows)
    z = zscore_columns(a, bad, chunk_rows) if normalize else a
    rows = _rows_per_chunk(m, chunk_rows)
    taken = ~ok
    running = np.zeros(m)
    order: list[int] = []
    for t in range(min(k, int(ok.sum()))):
        mean = running / t if t else running
        best, best_gain = -1, -np.inf
        for start in range(0, n, rows):
            gain = (np.asarray(z[start : start + rows], dtype=np.float64) - mean).max(axis=1)
            gain[taken[start : start + rows]] = -np.inf
            i = int(np.argmax(gain))
            # Strictly greater: on equal gains the earlier chunk, hence the lower row index, wins.
            if gain[i] > best_gain:
                best, best_gain = start + i, gain[i]
        order.append(best)
        taken[best] = True
        running += np.asarray(z[best], dtype=np.float64)
    return Selection(order, k, np.flatnonzero(~ok).tolist())


def aggregate_select(
    a: Any,
    target_tasks: Sequence[Hashable] | None,
    budget: Budget | int | float | str,
    aggregation: Aggregation | str,
    normalize: bool = False,
    bad: Any = None,
    chunk_rows: int | None = None,
) -> Selection:
    """Top-k by a per-candidate reduction of `a`: the task-max (LESS), instance-max and sum baselines of BIDS.

    Args:
        a: Influence matrix [N, M].
        target_tasks: Task label of each target [M]; None is one task.
        budget: A `Budget` or anything `Budget.parse` reads.
        aggregation: ``"task-max"``, ``"instance-max"`` or ``"sum"`` (`gradsift.score.less`).
        normalize: z-score the columns first, as BIDS does (default False: the baselines as published).
        bad: Optional boolean mask [N] of rows that must not be selected.
        chunk_rows: Rows reduced at a time; None picks about 64 MB.

    Returns:
        The top-k selection by the aggregated score.

    Raises:
        ValueError: On a malformed matrix, labels, mask or budget, or an unknown aggregation.
    """
    a = _matrix(a)
    n, m = a.shape
    aggregation = Aggregation(aggregation)
    groups = TaskGroups.from_labels(target_tasks, m)
    ok = usable_rows(a, bad, chunk_rows)
    z = zscore_columns(a, bad, chunk_rows) if normalize else a
    rows = _rows_per_chunk(m, chunk_rows)
    scores = np.empty(n)
    for start in range(0, n, rows):
        scores[start : start + rows] = aggregate(np.asarray(z[start : start + rows]), groups, aggregation)[0]
    return top_k(scores, budget, bad=~ok)


@dataclass(frozen=True)
class TaskCoverage:
    """How well a selection covers one target task.

    Attributes:
        task: The task label.
        n_targets: Its number of target examples.
        best_influence: Mean over the task's targets j of ``max_{i in S} A_ij``, the influence of the most
            influential selected candidate on j.
        covered: Fraction of the task's targets j whose most influential usable candidate in the whole pool
            is selected: ``max_{i in S} A_ij == max_{i usable} A_ij`` (ties count as covered).
        mean_influence: Mean over the task's targets j of ``mean_{i in S} A_ij``, how much the selection as a
            whole serves the task (unlike `best_influence`, it does not saturate once one good row is in).
        top_recall: Mean over the task's targets j of the share of j's ``|S|`` most influential usable
            candidates that are selected (1 when S is exactly j's own top list).
    """

    task: Hashable
    n_targets: int
    best_influence: float
    covered: float
    mean_influence: float
    top_recall: float


def coverage(
    a: Any,
    target_tasks: Sequence[Hashable] | None,
    selected: Sequence[int],
    bad: Any = None,
    chunk_rows: int | None = None,
) -> list[TaskCoverage]:
    """Per-task best-influence coverage of a selection, to compare how evenly BIDS and LESS serve the tasks.

    Pass the z-scored matrix (`zscore_columns`) to compare tasks whose raw influences differ in scale.

    Args:
        a: Influence matrix [N, M].
        target_tasks: Task label of each target [M]; None is one task.
        selected: Selected row indices (non-empty; order does not matter).
        bad: Optional boolean mask [N] of unusable rows (as given to the selector).
        chunk_rows: Rows read at a time; None picks about 64 MB.

    Returns:
        One `TaskCoverage` per task, in order of first appearance in `target_tasks`.

    Raises:
        ValueError: On a malformed matrix or labels, an empty selection, or a selected row that is out of
            range or unusable.
    """
    a = _matrix(a)
    n, m = a.shape
    groups = TaskGroups.from_labels(target_tasks, m)
    sel = np.unique(np.asarray(selected, dtype=np.int64))
    if len(sel) == 0:
        raise ValueError("coverage of an empty selection is undefined")
    if sel[0] < 0 or sel[-1] >= n:
        raise ValueError(f"selected rows must lie in [0, {n}), got {sel.tolist()[:10]}")
    ok = usable_rows(a, bad, chunk_rows)
    if not ok[sel].all():
        raise ValueError(f"selected rows {sel[~ok[sel]].tolist()[:10]} are bad or have non-finite influences")
    rows = _rows_per_chunk(m, chunk_rows)
    k = len(sel)
    # Running top-k values of each column over the usable rows: [<=k, M], merged chunk by chunk.
    top = np.empty((0, m))
    for start in range(0, n, rows):
        block = np.asarray(a[start : start + rows], dtype=np.float64)[ok[start : start + rows]]
        if len(block):
            both = np.concatenate([top, block])
            top = -np.partition(-both, k - 1, axis=0)[:k] if len(both) > k else both
    pool_best = top.max(axis=0)
    kth = top.min(axis=0)  # the k-th largest influence of each column (fewer usable rows: the smallest)
    chosen = np.asarray(a[sel], dtype=np.float64)
    sel_best = chosen.max(axis=0)
    hit = sel_best >= pool_best
    # Ties at the k-th value can put more than k rows at or above it; a recall cannot exceed 1.
    top_n = min(k, int(ok.sum()))  # the length of each column's top list
    recall = np.minimum((chosen >= kth).sum(axis=0), top_n) / top_n
    mean_sel = chosen.mean(axis=0)
    return [
        TaskCoverage(
            task=name,
            n_targets=int((groups.index == t).sum()),
            best_influence=float(sel_best[groups.index == t].mean()),
            covered=float(hit[groups.index == t].mean()),
            mean_influence=float(mean_sel[groups.index == t].mean()),
            top_recall=float(recall[groups.index == t].mean()),
        )
        for t, name in enumerate(groups.names)
    ]
