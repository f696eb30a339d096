"""LESS influence scores (methods.md section 1; Xia et al. 2024, code princeton-nlp/LESS).

For candidate ``z_i`` and target example ``v_j`` of checkpoint ``c`` the influence is the cosine of the
candidate's (Adam-preconditioned) feature and the target's gradient feature. Following the LESS code
(``less/data_selection/matching.py``), influences are first summed over checkpoints with each checkpoint's
weight (the epoch's mean learning rate), ``A_ij = sum_c w_c cos(g_c(z_i), g_c(v_j))``, and only then
reduced over targets:

- ``task-max`` (LESS): mean of ``A_ij`` over the targets of each task, max over tasks.
- ``instance-max``: max of ``A_ij`` over all targets (a BIDS baseline, methods.md section 4).
- ``sum``: sum of ``A_ij`` over all targets (a BIDS baseline).

Per-task means ``[N, T]`` are returned with every variant, for reporting, and on request the targets each
candidate helps most: the largest ``A_ij`` of its row (`gradsift.score.influence.TopTargets`), taken from the
same row blocks.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np

from gradsift.score.influence import TaskGroups, TopTargets, rows_of, weighted_influence_chunks


class Aggregation(StrEnum):
    """How the per-target influences ``A_ij`` of one candidate become its score."""

    TASK_MAX = "task-max"
    INSTANCE_MAX = "instance-max"
    SUM = "sum"


@dataclass(frozen=True)
class InfluenceScores:
    """Scores of a candidate pool.

    Attributes:
        scores: float64 [N]; ``-inf`` for bad rows.
        task_scores: float64 [N, T]: mean influence over each target task's examples; ``-inf`` for bad rows.
        tasks: Target task labels, column order of `task_scores`.
        bad: bool [N]: rows excluded (masked by the caller or with non-finite features).
        helps: The targets each candidate helps most (largest ``A_ij``), when asked for; index -1 for bad rows.
    """

    scores: np.ndarray
    task_scores: np.ndarray
    tasks: list[Hashable]
    bad: np.ndarray
    helps: TopTargets | None = None

    @property
    def bad_rows(self) -> np.ndarray:
        """int64 indices of the bad rows, for reporting."""
        return np.flatnonzero(self.bad)


def aggregate(block: np.ndarray, groups: TaskGroups, aggregation: Aggregation) -> tuple[np.ndarray, np.ndarray]:
    """Reduce influence rows over targets.

    Args:
        block: Influences ``A`` [n, M] (rows of the summed-over-checkpoints matrix); NaN rows stay NaN.
        groups: Task of each of the M targets.
        aggregation: The reduction (module docstring).

    Returns:
        ``(scores, task_scores)``: float64 [n] and float64 [n, T] (per-task means).
    """
    a = np.asarray(block)
    # float32 blocks stay float32 (the matmul is the cost at pool scale); anything else is reduced in float64.
    a = a if a.dtype == np.float32 else a.astype(np.float64)
    task_scores = (a @ groups.mean_matrix().astype(a.dtype)).astype(np.float64)
    if aggregation is Aggregation.TASK_MAX:
        scores = task_scores.max(axis=1)
    elif aggregation is Aggregation.INSTANCE_MAX:
        scores = a.max(axis=1).astype(np.float64)
    else:
        scores = a.sum(axis=1, dtype=np.float64)
    return scores, task_scores


def less_scores(
    candidates: Sequence[Any],
    targets: Sequence[Any],
    target_tasks: Sequence[Hashable] | None,
    weights: Sequence[float] | None = None,
    aggregation: Aggregation | str = Aggregation.TASK_MAX,
    bad: Any = None,
    chunk_rows: int | None = None,
    helps: int = 0,
) -> InfluenceScores:
    """LESS scores of a candidate pool, streamed over row blocks (methods.md section 1).

    Args:
        candidates: Per checkpoint, candidate features [N, k] (arrays or float16 memmaps; Adam-preconditioned
            update directions in LESS).
        targets: Per checkpoint, target gradient features [M, k].
        target_tasks: Task label of each target [M]; None treats all targets as one task.
        weights: Per checkpoint weight, the epoch's mean learning rate; None weighs all 1.
        aggregation: ``"task-max"`` (LESS), ``"instance-max"`` or ``"sum"``.
        bad: Optional boolean mask [N] of rows known bad (e.g. from the feature store).
        chunk_rows: Candidate rows per block; None picks about 64 MB per block.
        helps: Also find, for each candidate, the `helps` targets with the largest ``A_ij`` (0: not).

    Returns:
        Scores [N], per-task mean scores [N, T] and the bad-row mask (masked rows plus rows with non-finite
        features), bad rows scored ``-inf``; with `helps`, the targets each candidate helps most.

    Raises:
        ValueError: On mismatched shapes or checkpoints, an unknown aggregation, invalid weights or mask, or
            non-finite target features.
    """
    aggregation = Aggregation(aggregation)
    if helps < 0:
        raise ValueError(f"helps must be >= 0, got {helps}")
    plan = weighted_influence_chunks(candidates, targets, weights, True, chunk_rows, bad)
    n = rows_of(candidates[0], "candidate features").shape[0]
    groups = TaskGroups.from_labels(target_tasks, rows_of(targets[0], "target features").shape[0])
    scores = np.empty(n)
    task_scores = np.empty((n, len(groups.names)))
    top = TopTargets.empty(n, helps) if helps else None
    for start, block in plan:
        stop = start + block.shape[0]
        scores[start:stop], task_scores[start:stop] = aggregate(block, groups, aggregation)
        if top is not None:
            top.fill(start, block)
    is_bad = ~np.isfinite(scores)
    scores[is_bad] = -np.inf
    task_scores[is_bad] = -np.inf
    return InfluenceScores(scores, task_scores, list(groups.names), is_bad, top)
