"""BIDS: balanced influence across target instances (methods.md section 4; Dai et al. 2025, arXiv 2501.12147).

Input is the influence matrix ``A`` [N, M] of N candidates on M target examples drawn from several target
tasks; with LESS features that is ``gradsift.score.influence.influence_matrix(..., normalize=True)``, the
cosine influence per target example summed over checkpoints with learning-rate weights.

1. Instance-level normalisation: z-score every column over the candidates, ``A_ij <- (A_ij - mean_j) / std_j``
   (population std; a constant column becomes all 0, as it cannot rank anyone).
2. Iterative selection: starting from ``T = {}``, while ``|T| < B`` add
   ``argmax_{i not in T} max_j (A_ij - mean_{k in T} A_kj)`` (the mean is 0 while T is empty). The column
   means come from running sums updated once per pick; since the best row of a column does not depend on
   the means, each column's B largest entries, gathered in one streamed pass, are all the loop needs: it
   costs O(N * M) once and O(B * M) per pick rather than O(B * N * M). Ties go to the lowest row index.

Rows flagged bad, and rows of ``A`` with any non-finite entry, take no part in the column statistics and
are never selected. The task-max (LESS), instance-max and sum selections on the same matrix, and the
per-task coverage of a selection, are here too, to compare how balanced selections are.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
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


@dataclass(frozen=True)
class ColumnStats:
    """BIDS's instance-level normalisation of a matrix, ``z = (a - mean) * scale`` per column.

    Attributes:
        usable: bool [N], rows not flagged bad whose influences are all finite.
        mean: float64 [M], column means over the usable rows.
        scale: float64 [M], ``1 / std`` (population std over the usable rows), 0 for a constant column.
    """

    usable: np.ndarray
    mean: np.ndarray
    scale: np.ndarray

    def z(self, block: Any, c0: int = 0, c1: int | None = None) -> np.ndarray:
        """float32 [rows, c1 - c0] z-scores of a block of the matrix holding columns c0:c1 (NaN stays NaN)."""
        cols = slice(c0, c1)
        return ((np.asarray(block, dtype=np.float64) - self.mean[cols]) * self.scale[cols]).astype(np.float32)


def column_stats(a: Any, bad: Any = None, chunk_rows: int | None = None) -> ColumnStats:
    """Column means and standard deviations over the usable rows, in two passes (mean, then squared
    deviations) in float64, which keeps them accurate for columns far from zero.

    Args:
        a: Influence matrix [N, M] (array or memmap).
        bad: Optional boolean mask [N] of rows to leave out.
        chunk_rows: Rows read at a time; None picks about 64 MB.

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
    return ColumnStats(ok, mean, scale)


def zscore_columns(a: Any, bad: Any = None, chunk_rows: int | None = None) -> np.ndarray:
    """Instance-level normalisation of BIDS (methods.md section 4), see `column_stats`.

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
    stats = column_stats(a, bad, chunk_rows)
    rows = _rows_per_chunk(m, chunk_rows)
    z = np.empty((n, m), dtype=np.float32)
    for start in range(0, n, rows):
        z[start : start + rows] = stats.z(a[start : start + rows])
    z[~stats.usable] = np.nan
    return z


def column_tops(blocks: Iterable[tuple[int, np.ndarray]], m: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The `k` largest entries of every column, merged block by block, in (value desc, row asc) order.

    Memory is O(k * M) whatever the number of rows; ties at the k-th value keep the lowest rows, so the
    lists are exactly the first `k` of each column sorted by (value desc, row asc).

    Args:
        blocks: ``(first_row, values [rows, M])`` in increasing row order; rows with a NaN are skipped.
        m: Number of columns M.
        k: List length (>= 1).

    Returns:
        ``(values [k', M], rows [k', M] int64)``, values in the blocks' dtype, ``k' = min(k, non-NaN rows)``.
    """
    top_v: np.ndarray | None = None
    top_r = np.empty((0, m), dtype=np.int64)
    for start, block in blocks:
        block = np.asarray(block)
        if top_v is None:
            top_v = np.empty((0, m), dtype=block.dtype)
        keep = ~np.isnan(block).any(axis=1)
        if not keep.any():
            continue
        v = np.concatenate([top_v, block[keep]])
        r = np.concatenate([top_r, np.broadcast_to((start + np.flatnonzero(keep))[:, None], (int(keep.sum()), m))])
        if len(v) > k:
            kth = -np.partition(-v, k - 1, axis=0)[k - 1]
            # Above the k-th value: always kept (key -1); at it: lowest rows first; below it: never.
            key = np.where(v > kth, -1, np.where(v == kth, r, np.iinfo(np.int64).max))
            idx = np.argpartition(key, k - 1, axis=0)[:k]
            v, r = np.take_along_axis(v, idx, 0), np.take_along_axis(r, idx, 0)
        top_v, top_r = v, r
    if top_v is None:
        top_v = np.empty((0, m))
    order = np.lexsort((top_r, -top_v), axis=0)
    return np.take_along_axis(top_v, order, 0), np.take_along_axis(top_r, order, 0)


def bids_select(
    a: Any,
    budget: Budget | int | float | str,
    bad: Any = None,
    normalize: bool = True,
    chunk_rows: int | None = None,
) -> Selection:
    """BIDS iterative selection (methods.md section 4) in one streamed pass plus O(B * M) per pick.

    ``max_{i not in T} max_j (z_ij - mu_j) = max_j (max_{i not in T} z_ij - mu_j)``: the best candidate of
    column j is its largest unselected entry whatever the running means ``mu``, so each pick only needs the
    head of every column's sorted list. At most B rows are ever taken, so each column's B largest entries
    (`column_tops`, streamed in chunks) suffice, and the loop is O(B * M) with running column sums instead
    of the O(B * N * M) rescan (kept as the reference in the tests). Ties go to the lowest row index.

    Args:
        a: Influence matrix [N, M] (array or memmap), e.g. from `influence_matrix`.
        budget: A `Budget` or anything `Budget.parse` reads; fractions are of the whole pool N.
        bad: Optional boolean mask [N] of rows that must not be selected.
        normalize: z-score the columns first (BIDS); False runs the iteration on `a` as given.
        chunk_rows: Rows per step of each scan; None picks about 64 MB of temporaries.

    Returns:
        The selection in the order BIDS added the rows; fewer than the budget if fewer rows are usable.
        Memory beyond `a` is O(B * M): about 16 bytes per entry of the column lists.

    Raises:
        ValueError: On a malformed matrix, mask or budget, or no usable row.
    """
    a = _matrix(a)
    n, m = a.shape
    k = Budget.parse(budget).resolve(n)
    if normalize:
        stats = column_stats(a, bad, chunk_rows)
        ok = stats.usable

        def values(block: Any, c0: int = 0, c1: int = m) -> np.ndarray:
            return stats.z(block, c0, c1)

    else:
        ok = usable_rows(a, bad, chunk_rows)

        def values(block: Any, c0: int = 0, c1: int = m) -> np.ndarray:
            return np.asarray(block, dtype=np.float64)

    picks = min(k, int(ok.sum()))
    if picks == 0:
        return Selection([], k, np.flatnonzero(~ok).tolist())
    # Columns in groups whose lists take about CHUNK_BYTES, so the merge temporaries stay small; each group
    # reads its columns of every row block (one more pass over `a` per group, from the page cache).
    width = max(1, min(m, CHUNK_BYTES // (16 * picks)))
    parts = []
    for c0 in range(0, m, width):
        c1 = min(m, c0 + width)
        rows = chunk_rows or max(1, CHUNK_BYTES // (8 * (c1 - c0)))
        blocks = (
            (s, np.where(ok[s : s + rows, None], values(a[s : s + rows, c0:c1], c0, c1), np.nan))
            for s in range(0, n, rows)
        )
        parts.append(column_tops(blocks, c1 - c0, picks))
    top_v = np.concatenate([p[0] for p in parts], axis=1)
    top_r = np.concatenate([p[1] for p in parts], axis=1)
    taken = np.zeros(n, dtype=bool)
    head = np.zeros(m, dtype=np.int64)
    cols = np.arange(m)
    running = np.zeros(m)
    order: list[int] = []
    for t in range(picks):
        mean = running / t if t else running
        heads = top_r[head, cols]
        while (stale := taken[heads]).any():
            head[stale] += 1
            heads = top_r[head, cols]
        gain = top_v[head, cols].astype(np.float64) - mean
        best = int(heads[gain == gain.max()].min())
        order.append(best)
        taken[best] = True
        running += np.asarray(values(a[best : best + 1]), dtype=np.float64)[0]
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
