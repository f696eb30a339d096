"""Percentile bands: closed interval, ties, bad rows, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from gradsift.selection.band import band_limits, percentile_band


def test_band_by_hand():
    scores = np.arange(10.0)  # 0..9
    # 20th percentile: position 0.2 * 9 = 1.8 -> 1.8; 80th: 7.2 -> 7.2. Kept: 2..7.
    assert band_limits(scores) == pytest.approx((1.8, 7.2))
    assert np.flatnonzero(percentile_band(scores)).tolist() == [2, 3, 4, 5, 6, 7]


def test_band_is_closed_so_limits_and_ties_are_kept():
    scores = np.array([1.0, 2.0, 2.0, 2.0, 2.0, 3.0])
    # Both limits are 2.0 here: every tied row is kept, none dropped by its position.
    assert percentile_band(scores, 20, 80).tolist() == [False, True, True, True, True, False]
    assert percentile_band(scores, 0, 100).all()


def test_bad_rows_are_outside_the_band_and_the_percentiles():
    scores = np.array([np.nan, 0.0, 1.0, 2.0, 3.0, 4.0, -np.inf, 100.0])
    bad = np.zeros(8, dtype=bool)
    bad[7] = True
    # Usable: 0..4 -> 25th percentile 1, 75th 3.
    assert band_limits(scores, 25, 75, bad=bad) == (1.0, 3.0)
    assert np.flatnonzero(percentile_band(scores, 25, 75, bad=bad)).tolist() == [2, 3, 4]
    assert not percentile_band(scores, 0, 100, bad=bad)[[0, 6, 7]].any()


@pytest.mark.parametrize(
    ("scores", "lo", "hi", "message"),
    [
        ([1.0, 2.0], 80, 20, "lo < hi"),
        ([1.0, 2.0], -1, 50, "lo < hi"),
        ([1.0, 2.0], 10, 101, "lo < hi"),
        ([1.0, 2.0], 50, 50, "lo < hi"),
        ([np.nan, np.inf], 20, 80, "no usable score"),
        ([], 20, 80, "non-empty"),
    ],
)
def test_bad_input(scores, lo, hi, message):
    with pytest.raises(ValueError, match=message):
        percentile_band(scores, lo, hi)


@given(
    st.lists(st.one_of(st.floats(-1e6, 1e6), st.just(float("nan"))), min_size=1, max_size=60),
    st.floats(0, 99),
    st.floats(1, 100),
)
def test_band_properties(scores, lo, width):
    hi = min(100.0, lo + width)
    scores = np.array(scores)
    assume(np.isfinite(scores).any())
    mask = percentile_band(scores, lo, hi)
    q_lo, q_hi = band_limits(scores, lo, hi)
    with np.errstate(invalid="ignore"):
        assert np.array_equal(mask, (scores >= q_lo) & (scores <= q_hi))
    assert not mask[~np.isfinite(scores)].any()
    wider = percentile_band(scores, max(0.0, lo - 5), min(100.0, hi + 5))
    assert not (mask & ~wider).any()
