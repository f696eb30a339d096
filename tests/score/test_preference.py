"""The preference scores on arrays: DPO loss, margins, LossDiff, IRM and IF by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gradsift.score.preference import (
    dpo_loss,
    implicit_reward_margin,
    influence_from_features,
    loss_diff,
    reward_margins,
    summed_direction,
)
from gradsift.stats import overlap

BETA = 0.1


def test_overlap_and_dpo_loss():
    assert overlap([1, 2, 3], [3, 4]) == {
        "n_a": 3,
        "n_b": 2,
        "shared": 1,
        "jaccard": 0.25,
        "share_of_a": 1 / 3,
        "share_of_b": 0.5,
    }
    m = np.array([-2000.0, -1.0, 0.0, 3.0, 2000.0])
    expected = -torch.nn.functional.logsigmoid(torch.tensor(BETA * m)).numpy()
    np.testing.assert_allclose(dpo_loss(m, BETA), expected, rtol=1e-12)


def test_margins_lossdiff_and_irm_by_hand():
    policy = np.array([[-1.0, -4.0], [-3.0, -2.0]])
    reference = np.array([[-2.0, -2.0], [-3.0, -3.0]])
    m = reward_margins(policy, reference)  # (1 - (-2), 0 - 1)
    np.testing.assert_array_equal(m, [3.0, -1.0])
    np.testing.assert_array_equal(implicit_reward_margin(m, BETA), BETA * m)
    m_val = np.array([1.0, 2.0])
    ld = loss_diff(m, m_val, BETA)
    np.testing.assert_array_equal(ld.loss_warmup, dpo_loss(m, BETA))
    np.testing.assert_array_equal(ld.loss_val, dpo_loss(m_val, BETA))
    np.testing.assert_array_equal(ld.value, ld.loss_warmup - ld.loss_val)
    # A larger margin means a lower loss: the warm-up's margin 3 > 1 gives a negative LossDiff.
    assert ld.value[0] < 0 < ld.value[1]


def test_influence_is_the_inner_product_with_the_summed_valid_gradients():
    val = np.array([[1.0, 0.0, 2.0], [np.nan, 5.0, 0.0], [0.0, 1.0, -1.0]], dtype=np.float32)
    direction = summed_direction(val, np.array([True, False, True]))
    np.testing.assert_array_equal(direction, [1.0, 1.0, 1.0])
    assert direction.dtype == np.float64
    pool = np.array([[1.0, 2.0, 3.0], [0.5, 0.0, -1.0], [np.inf, 0.0, 0.0]], dtype=np.float32)
    out = influence_from_features(pool, np.array([True, True, False]), direction)
    np.testing.assert_array_equal(out[:2], [6.0, -0.5])
    assert np.isnan(out[2])
    with pytest.raises(ValueError, match="every validation pair has a non-finite gradient"):
        summed_direction(val, np.zeros(3, dtype=bool))
