"""PRISM preference-aware influence scores (methods.md section 2; Lin et al. 2026).

Each target prompt ``q`` has a wanted response ``y+`` and an unwanted one ``y-``. With the token-mean
losses ``lbar = -log pbar`` at checkpoint c, the preference weight is

    pi_{q,c} = pbar_c(y+|q) / (pbar_c(y+|q) + pbar_c(y-|q)) = sigmoid(lbar_c(q, y-) - lbar_c(q, y+)),

the target direction of checkpoint c is

    g*_c = (1/|Q|) sum_q pi_{q,c} (grad lbar_c(q, y+) - grad lbar_c(q, y-)),

and a candidate's score is ``s(z) = sum_c w_c <g_c(z), g*_c>`` (raw inner product, as in the paper), or with
``cosine`` scoring ``sum_c w_c cos(g_c(z), g*_c)``. A gradient step on ``z`` with learning rate ``eta``
changes ``log pbar(y+) - log pbar(y-)`` by ``eta * s(z)`` to first order, so high scores push the model
towards ``y+``.

One model (the paper's "current model"): ``pi_q``, ``g*``, ``y-`` and the candidate gradients all come from
the same checkpoint. The paper scores at one model; with several checkpoints (a LESS-style warm-up, gradsift's
extension) each checkpoint has its own weights, so the losses may be given per checkpoint [C, M]. A single
[M] set of losses weighs every checkpoint alike (one checkpoint, or weights the caller fixed elsewhere).
No released code of PRISM is known to gradsift: the formulas follow the paper's text (methods.md section 2).

Missing ``y-`` (gradsift's choice, methods.md section 2): when a target has no ``rejected`` response,
``y-`` is the model's own greedy response to ``q`` (at the checkpoint the gradients are taken at), so ``g*``
points from what the model does now towards what the user wants; a user-given ``rejected`` always wins. That
generation happens where the target gradients are computed (`gradsift.recipes.sft`); this module takes the
resulting features and losses as arrays.
``uniform=True`` sets every ``pi_q = 1``, the ablation the paper reports.

"Helps most" (gradsift's definition, for the report): the score is a sum over targets,
``s(z) = sum_q t_q(z)`` with the per-target term

    t_q(z) = sum_c w_c (pi_{q,c} / |Q|) <g_c(z), g+_{q,c} - g-_{q,c}>                      (raw)
    t_q(z) = sum_c w_c (pi_{q,c} / (|Q| |g*_c|)) <g_c(z), g+_{q,c} - g-_{q,c}> / |g_c(z)|  (cosine),

so the targets a candidate helps most are those with the largest ``t_q(z)``: the ones whose preference
(towards ``y+``, away from ``y-``) a step on ``z`` moves furthest, weighted as the score weighs them. The terms
come from the same pass over the candidate rows as the score (`prism_scores` with ``helps``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np

from gradsift.score.influence import (
    TopTargets,
    checkpoint_weights,
    default_chunk_rows,
    inverse_norms,
    rows_of,
    weighted_influence_chunks,
)


class Scoring(StrEnum):
    """How a candidate feature is compared with the target direction."""

    RAW = "raw"
    COSINE = "cosine"


@dataclass(frozen=True)
class PrismScores:
    """PRISM scores of a candidate pool.

    Attributes:
        scores: float64 [N]; ``-inf`` for bad rows.
        preference: float64 [M], or [C, M] for per-checkpoint losses: the weights ``pi_q`` used (all 1 with
            ``uniform``).
        directions: float64 [C, k]: the target direction ``g*_c`` of each checkpoint.
        bad: bool [N]: rows excluded (masked by the caller or with non-finite features).
        helps: The targets with the largest per-target terms ``t_q(z)`` (module docstring), when asked for.
    """

    scores: np.ndarray
    preference: np.ndarray
    directions: np.ndarray
    bad: np.ndarray
    helps: TopTargets | None = None

    @property
    def bad_rows(self) -> np.ndarray:
        """int64 indices of the bad rows, for reporting."""
        return np.flatnonzero(self.bad)


def preference_weights(loss_chosen: Any, loss_rejected: Any, uniform: bool = False) -> np.ndarray:
    """Preference weights ``pi_q = pbar(y+) / (pbar(y+) + pbar(y-))`` (methods.md section 2).

    Computed as ``sigmoid(lbar- - lbar+)`` in a form that neither overflows nor loses the small weights,
    so losses in the hundreds (long, unlikely responses) are fine.

    Args:
        loss_chosen: Token-mean losses ``lbar(q, y+)`` [M] at one checkpoint.
        loss_rejected: Token-mean losses ``lbar(q, y-)`` [M].
        uniform: Return all ones (the paper's ablation); the losses are still checked.

    Returns:
        float64 array [M] in [0, 1].

    Raises:
        ValueError: If the losses are not 1-D of equal length, are empty, or are not finite.
    """
    lp = np.asarray(loss_chosen, dtype=np.float64)
    lm = np.asarray(loss_rejected, dtype=np.float64)
    if lp.ndim != 1 or lp.shape != lm.shape or len(lp) == 0:
        raise ValueError(f"need one chosen and one rejected loss per target, got shapes {lp.shape} and {lm.shape}")
    if not (np.all(np.isfinite(lp)) and np.all(np.isfinite(lm))):
        raise ValueError("target losses must be finite (a NaN/inf loss would make pi_q undefined)")
    if uniform:
        return np.ones_like(lp)
    x = lm - lp
    # sigmoid(x) = 1 / (1 + e^-x) for x >= 0 and e^x / (1 + e^x) for x < 0: the exponent is never positive.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def target_direction(
    grad_chosen: Any, grad_rejected: Any, preference: np.ndarray, chunk_rows: int | None = None
) -> np.ndarray:
    """``g* = (1/|Q|) sum_q pi_q (g+_q - g-_q)`` for one checkpoint, streamed over target rows.

    Args:
        grad_chosen: Projected gradients of ``lbar(q, y+)`` [M, k] (array or memmap).
        grad_rejected: Projected gradients of ``lbar(q, y-)`` [M, k].
        preference: Weights ``pi_q`` [M].
        chunk_rows: Target rows per block; None picks about 64 MB per block.

    Returns:
        float64 array [k].

    Raises:
        ValueError: On mismatched shapes, non-finite gradients or ``chunk_rows < 1``.
    """
    if chunk_rows is not None and chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    gp = rows_of(grad_chosen, "chosen target gradients")
    gm = rows_of(grad_rejected, "rejected target gradients")
    if gp.shape != gm.shape or preference.shape != (gp.shape[0],):
        raise ValueError(
            f"chosen gradients {tuple(gp.shape)}, rejected gradients {tuple(gm.shape)} and preference weights "
            f"{preference.shape} must agree on M targets and k"
        )
    m, k = gp.shape
    # Two float64 row blocks per step: as much memory as a float32 block of 4k columns.
    rows = chunk_rows or default_chunk_rows(4 * k, 0)
    total = np.zeros(k)
    for start in range(0, m, rows):
        diff = np.asarray(gp[start : start + rows], dtype=np.float64) - np.asarray(
            gm[start : start + rows], dtype=np.float64
        )
        total += preference[start : start + rows] @ diff
    if not np.all(np.isfinite(total)):
        raise ValueError("target gradients contain NaN/inf: the target direction is undefined")
    return total / m


def prism_scores(
    candidates: Sequence[Any],
    grad_chosen: Sequence[Any],
    grad_rejected: Sequence[Any],
    loss_chosen: Any,
    loss_rejected: Any,
    weights: Sequence[float] | None = None,
    scoring: Scoring | str = Scoring.RAW,
    uniform: bool = False,
    bad: Any = None,
    chunk_rows: int | None = None,
    helps: int = 0,
) -> PrismScores:
    """PRISM scores ``s(z) = sum_c w_c <g_c(z), g*_c>`` of a candidate pool (methods.md section 2).

    Args:
        candidates: Per checkpoint, candidate gradient features [N, k] (summed-loss gradients in the paper).
        grad_chosen: Per checkpoint, target gradients of ``lbar(q, y+)`` [M, k].
        grad_rejected: Per checkpoint, target gradients of ``lbar(q, y-)`` [M, k] (module docstring for
            targets without a rejected response).
        loss_chosen: Token-mean losses ``lbar(q, y+)``, per checkpoint [C, M] (each checkpoint's ``pi_q`` from
            its own losses), or [M] for the same weights at every checkpoint.
        loss_rejected: Token-mean losses ``lbar(q, y-)``, of the same shape.
        weights: Per checkpoint weight (e.g. mean learning rate); None weighs all 1.
        scoring: ``"raw"`` inner product (the paper) or ``"cosine"``.
        uniform: Weigh every target 1 instead of ``pi_q`` (the paper's ablation).
        bad: Optional boolean mask [N] of rows known bad.
        chunk_rows: Candidate rows per block; None picks about 64 MB per block.
        helps: Also find, for each candidate, the `helps` targets with the largest per-target terms ``t_q(z)``
            (module docstring), from the same pass (0: not).

    Returns:
        Scores [N] (bad rows ``-inf``), the preference weights, the per-checkpoint directions, the bad mask and,
        with `helps`, the targets each candidate helps most.

    Raises:
        ValueError: On mismatched checkpoints or shapes, non-finite losses or target gradients, invalid
            weights or mask, or an unknown scoring.
    """
    scoring = Scoring(scoring)
    if not len(candidates) == len(grad_chosen) == len(grad_rejected):
        raise ValueError(
            f"got candidate features for {len(candidates)} checkpoints, chosen target gradients for "
            f"{len(grad_chosen)} and rejected for {len(grad_rejected)}"
        )
    checkpoint_weights(weights, len(candidates))
    lp, lm = np.asarray(loss_chosen, dtype=np.float64), np.asarray(loss_rejected, dtype=np.float64)
    if lp.ndim == 2:
        if lp.shape != lm.shape or lp.shape[0] != len(candidates):
            raise ValueError(
                f"per-checkpoint losses need shape [C={len(candidates)}, M] for both responses, got {lp.shape} "
                f"and {lm.shape}"
            )
        preference = np.stack([preference_weights(p, m, uniform) for p, m in zip(lp, lm, strict=True)])
        per_checkpoint = list(preference)
    else:
        preference = preference_weights(lp, lm, uniform)
        per_checkpoint = [preference] * len(candidates)
    directions = np.stack(
        [
            target_direction(gp, gm, pi, chunk_rows)
            for gp, gm, pi in zip(grad_chosen, grad_rejected, per_checkpoint, strict=True)
        ]
    )
    if helps < 0:
        raise ValueError(f"helps must be >= 0, got {helps}")
    cosine = scoring is Scoring.COSINE
    # Column 0 of every block is the score; with `helps`, columns 1..M are the per-target terms, whose
    # target rows carry the scale of the score's direction so that they sum to it.
    scale = inverse_norms(np.einsum("ck,ck->c", directions, directions)) if cosine else np.ones(len(directions))
    columns = []
    for c, (direction, pi) in enumerate(zip(directions, per_checkpoint, strict=True)):
        rows = [(direction * scale[c])[None, :].astype(np.float32)]
        if helps:
            diff = np.asarray(grad_chosen[c], dtype=np.float32) - np.asarray(grad_rejected[c], dtype=np.float32)
            rows.append(diff * (pi * scale[c] / len(pi)).astype(np.float32)[:, None])
        columns.append(np.concatenate(rows))
    n = rows_of(candidates[0], "candidate features").shape[0]
    scores = np.empty(n)
    top = TopTargets.empty(n, helps) if helps else None
    blocks = weighted_influence_chunks(candidates, columns, weights, cosine, chunk_rows, bad, normalize_targets=False)
    for start, block in blocks:
        scores[start : start + block.shape[0]] = block[:, 0]
        if top is not None:
            top.fill(start, block[:, 1:])
    is_bad = ~np.isfinite(scores)
    scores[is_bad] = -np.inf
    return PrismScores(scores, preference, directions, is_bad, top)
