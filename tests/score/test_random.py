"""Seeded random scores (score/random.py)."""

import numpy as np

from gradsift.score.random import random_scores


def test_seeded_draws_repeat_and_differ_by_seed():
    a, b, c = random_scores(50, 0), random_scores(50, 0), random_scores(50, 1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(a, np.random.default_rng(0).random(50))
    assert a.shape == (50,) and ((a >= 0) & (a < 1)).all()
