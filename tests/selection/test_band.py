"""Percentile bands: closed interval, ties, bad rows, bad input; band and top-k selection of preference pairs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from gradsift.selection.band import band_limits, percentile_band, percentile_ranks, select_pairs
from gradsift.selection.topk import top_k


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


def test_band_selection_by_hand():
    values = np.arange(10.0)  # percentiles 20/80 are 1.8 and 7.2: the band is 2..7
    sel = select_pairs({"x": values}, budget=4)
    np.testing.assert_array_equal(np.flatnonzero(sel.in_band["x"]), [2, 3, 4, 5, 6, 7])
    # Mid-rank percentiles 25, 35, 45, 55, 65, 75 for 2..7: 45 and 55 are nearest the centre 50 (tie: row order).
    assert sel.selected == [4, 5, 3, 6]
    assert top_k(sel.score, 4).indices == sel.selected
    assert np.isnan(sel.score[[0, 1, 8, 9]]).all()
    assert sel.info["band"]["limits"]["x"] == pytest.approx([1.8, 7.2])
    assert sel.info["n_in_band"] == {"x": 6, "all": 6} and sel.info["n_selected"] == 4
    assert select_pairs({"x": values}, budget=4, order="high").selected == [7, 6, 5, 4]
    assert select_pairs({"x": values}, budget=0).selected == [4, 5, 3, 6, 2, 7]
    short = select_pairs({"x": values}, budget=8)
    assert short.selected == [4, 5, 3, 6, 2, 7] and short.info["shortfall"] == 2
    assert select_pairs({"x": values}, budget=0, lo=0, hi=100).info["n_in_band"]["x"] == 10


def test_without_a_budget_the_whole_band_is_selected():
    values = np.arange(10.0)  # the band is 2..7 (test_band_selection_by_hand)
    whole = select_pairs({"x": values}, budget=None)
    assert whole.selected == [4, 5, 3, 6, 2, 7] == select_pairs({"x": values}, budget=0).selected
    assert whole.info["budget"] is None and whole.info["band_size"] == whole.info["n_selected"] == 6
    assert "shortfall" not in whole.info
    # a budget cuts the band, centre first; the band's size is reported either way
    cut = select_pairs({"x": values}, budget=2)
    assert cut.selected == whole.selected[:2] and cut.info["band_size"] == 6 and cut.info["n_selected"] == 2
    fusion = select_pairs({"a": values, "b": values[::-1].copy()}, budget=None, lo=30, hi=70)
    assert fusion.info["band_size"] == fusion.info["n_in_band"]["all"] == len(fusion.selected)
    with pytest.raises(ValueError, match="at least 1"):
        select_pairs({"x": values}, budget=None, mode="topk")


def test_unscored_pairs_are_never_selected():
    values = np.array([np.nan, 0.0, 1.0, 2.0, 3.0, 4.0, np.inf])
    sel = select_pairs({"x": values}, budget=0, lo=0, hi=100)
    assert sorted(sel.selected) == [1, 2, 3, 4, 5] and sel.info["n_scored"] == 5
    np.testing.assert_allclose(percentile_ranks(values)[1:6], [10, 30, 50, 70, 90])
    assert np.isnan(percentile_ranks(values)[[0, 6]]).all()
    assert select_pairs({"x": values}, budget=2, mode="topk").selected == [5, 4]


def test_fusion_is_the_intersection_of_both_bands():
    a = np.array([0.0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    b = np.array([9.0, 1, 8, 3, 4, 2, 6, 5, 0, 7])
    sel = select_pairs({"a": a, "b": b}, budget=0)
    np.testing.assert_array_equal(sel.in_band["all"], percentile_band(a) & percentile_band(b))
    assert sorted(sel.selected) == np.flatnonzero(sel.in_band["all"]).tolist() == [3, 4, 5, 6, 7]
    # Centre order: the larger of the two distances from 50 (a's and b's mid-rank percentiles).
    ra, rb = percentile_ranks(a), percentile_ranks(b)
    dist = np.maximum(abs(ra - 50), abs(rb - 50))
    assert sel.selected == sorted([3, 4, 5, 6, 7], key=lambda i: (dist[i], i))
    assert sel.selected == [4, 3, 6, 5, 7]  # distances 5, 15, 15, 25, 25
    # Top-k of a fusion: the lower of the two percentile ranks.
    top = select_pairs({"a": a, "b": b}, budget=2, mode="topk")
    assert top.selected == [9, 6]  # ranks (95, 75) and (65, 65); row 2 and 0 have a low rank in one score


@settings(max_examples=60, deadline=None)
@given(
    values=arrays(np.float64, st.integers(1, 40), elements=st.floats(-1e6, 1e6) | st.just(np.nan)),
    lo=st.floats(0, 60),
    width=st.floats(1, 40),
    budget=st.integers(0, 50),
    order=st.sampled_from(["centre", "high"]),
)
def test_band_selection_invariants(values, lo, width, budget, order):
    if not np.isfinite(values).any():
        with pytest.raises(ValueError, match="no usable score"):
            select_pairs({"x": values}, budget, lo, lo + width, order=order)
        return
    sel = select_pairs({"x": values}, budget, lo, lo + width, order=order)
    band = percentile_band(values, lo, lo + width)
    assert len(set(sel.selected)) == len(sel.selected)
    assert all(band[i] for i in sel.selected)
    assert len(sel.selected) == (band.sum() if budget == 0 else min(budget, band.sum()))
    priorities = sel.score[sel.selected]
    assert np.all(np.diff(priorities) <= 0)
    if budget:
        assert top_k(sel.score, budget).indices == sel.selected


@pytest.mark.parametrize(
    ("columns", "kwargs", "message"),
    [
        ({}, {}, "no score column"),
        ({"a": np.zeros(3), "b": np.zeros(4)}, {}, "one non-zero length"),
        ({"a": np.zeros((2, 2))}, {}, "1-D"),
        ({"a": np.arange(3.0)}, {"lo": 80, "hi": 20}, "percentile band"),
        ({"a": np.arange(3.0)}, {"budget": -1}, "budget must be >= 0"),
        ({"a": np.arange(3.0)}, {"budget": 0, "mode": "topk"}, "at least 1"),
        ({"a": np.full(3, np.nan)}, {}, "no usable score"),
    ],
)
def test_select_pairs_bad_input(columns, kwargs, message):
    with pytest.raises(ValueError, match=message):
        select_pairs(columns, **{"budget": 2, **kwargs})
