"""Ranks and Spearman's correlation in numpy, against scipy's."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import rankdata, spearmanr

from gradsift.stats import average_ranks, spearman


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_average_ranks_equal_scipys_with_ties(seed):
    rng = np.random.default_rng(seed)
    v = np.round(rng.normal(size=200), 1)  # many ties
    np.testing.assert_array_equal(average_ranks(v), rankdata(v, method="average"))
    assert average_ranks([]).shape == (0,)


def test_spearman_equals_scipys_over_the_finite_rows():
    rng = np.random.default_rng(3)
    a = np.round(rng.normal(size=300), 1)
    b = a + rng.normal(size=300)
    a[5], b[7] = np.nan, np.inf
    ok = np.isfinite(a) & np.isfinite(b)
    assert spearman(a, b) == pytest.approx(spearmanr(a[ok], b[ok]).statistic, rel=1e-12)
    assert spearman(a[:2], b[:2]) is None  # fewer than 3 rows
    assert spearman(np.ones(10), np.arange(10.0)) is None  # a constant has no rank correlation
