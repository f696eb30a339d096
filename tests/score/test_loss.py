"""Loss and perplexity scores from per-example losses (score/loss.py)."""

import numpy as np
import pytest

from gradsift.score.loss import loss_scores

LOSS = np.array([2.0, 0.5, np.nan, 1.0])


def test_high_order_scores_the_loss_and_keeps_nan():
    np.testing.assert_array_equal(loss_scores(LOSS), LOSS)


def test_low_order_negates_so_the_easiest_rank_first():
    score = loss_scores(LOSS, order="low")
    np.testing.assert_array_equal(score, -LOSS)
    assert int(np.nanargmax(score)) == 1


def test_perplexity_is_exp_loss_in_the_same_order():
    np.testing.assert_allclose(loss_scores(LOSS, perplexity=True), np.exp(LOSS))
    np.testing.assert_allclose(loss_scores(LOSS, perplexity=True, order="low"), -np.exp(LOSS))


def test_unknown_order_is_refused():
    with pytest.raises(ValueError, match="loss_order must be 'high' or 'low'"):
        loss_scores(LOSS, order="middle")  # type: ignore[arg-type]
