"""The scores of TIF, LossDiff, IRM and their fusion for preference pairs, on arrays (methods.md section 3).

Zhang et al. 2025, "Towards Understanding Valuable Preference Data for LLM Alignment". For a pair
``d = (x, y_w, y_l)`` and the DPO loss ``l`` (sigmoid loss, temperature ``beta``, reference = the base
model, i.e. the adapter switched off):

- the implicit reward margin ``m = (log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x))``
  (summed token log-probabilities), and ``l = -log sigmoid(beta m)``;
- IF(d) = ``<g(d), sum_{v in V} g(v)>`` with ``g`` the gradient of ``l`` w.r.t. the LoRA weights at the
  warm-up checkpoint ``theta_w``. A gradient step ``theta_w - eta g(d)`` changes the summed validation loss by
  ``-eta IF(d)`` to first order: a large IF predicts a large *decrease*. TIF keeps the pairs whose IF lies in
  the middle percentile band;
- LossDiff(d) = ``l(theta_w; d) - l(theta_val; d)``, with ``theta_val`` one epoch of DPO on ``V`` starting from
  ``theta_w`` (the paper's text and gradsift's default; option ``val_init`` of `gradsift.recipes.preference`);
- IRM(d) = ``beta * m(d)`` under ``theta_w``;
- the fusion keeps a pair only when both LossDiff and IRM lie in their middle bands. The band methods keep
  their whole band unless a budget is given (the paper's fusion keeps about 60% of the pool).

The bands and the selection are `gradsift.selection.band.select_pairs`; the DPO runs, forward passes and gradient
passes that produce these arrays are `gradsift.recipes.preference`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


def dpo_loss(margin: np.ndarray, beta: float) -> np.ndarray:
    """DPO sigmoid loss ``-log sigmoid(beta m) = log(1 + exp(-beta m))`` from margins [N] (stable for any m)."""
    return np.logaddexp(0.0, -beta * np.asarray(margin, dtype=np.float64))


def reward_margins(policy: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Implicit reward margins ``m`` [N] (without beta) from summed log-probabilities.

    Args:
        policy: [N, 2] ``log pi(y_w|x)`` and ``log pi(y_l|x)`` under the policy.
        reference: [N, 2] the same under the reference.

    Returns:
        float64 [N].
    """
    pol, ref = np.asarray(policy, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    return (pol[:, 0] - ref[:, 0]) - (pol[:, 1] - ref[:, 1])


class LossDiff(NamedTuple):
    """LossDiff and the two losses it is the difference of, each [N] float64."""

    value: np.ndarray
    loss_warmup: np.ndarray
    loss_val: np.ndarray


def loss_diff(margin_warmup: np.ndarray, margin_val: np.ndarray, beta: float) -> LossDiff:
    """LossDiff ``l(theta_w; d) - l(theta_val; d)`` from the margins [N] under the warm-up and ``theta_val``."""
    loss_w, loss_v = dpo_loss(margin_warmup, beta), dpo_loss(margin_val, beta)
    return LossDiff(loss_w - loss_v, loss_w, loss_v)


def implicit_reward_margin(margin: np.ndarray, beta: float) -> np.ndarray:
    """IRM ``beta * m`` [N] from the margins under the warm-up."""
    return beta * np.asarray(margin, dtype=np.float64)


def summed_direction(features: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """The summed validation gradient ``sum_v g(v)`` [k] float64 from per-pair gradient features [M, k].

    Args:
        features: [M, k] one (possibly projected) gradient per validation pair.
        valid: bool [M]; pairs with non-finite gradients (False) are left out of the sum.

    Raises:
        ValueError: No valid pair.
    """
    ok = np.asarray(valid, dtype=bool)
    if not ok.any():
        raise ValueError("every validation pair has a non-finite gradient: IF is undefined")
    return np.asarray(features[ok], dtype=np.float64).sum(axis=0)


def influence_from_features(features: np.ndarray, valid: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """IF(d) = ``<g(d), G>`` [N] float64 for per-pair gradient features [N, k] and a direction ``G`` [k].

    Projected features give IF up to the projection's error (``<P g, P G>``, the projection being linear);
    rows that are not `valid` (non-finite gradients) get NaN.
    """
    out = np.asarray(features, dtype=np.float64) @ np.asarray(direction, dtype=np.float64)
    out[~np.asarray(valid, dtype=bool)] = np.nan
    return out
