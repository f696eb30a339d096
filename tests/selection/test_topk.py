"""Top-k and per-task quotas: hand cases, tie-breaking, bad rows, and a sorted() reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gradsift.selection.budget import Budget
from gradsift.selection.topk import Selection, proportional_quotas, top_k, top_k_per_task


def reference_top_k(scores, k, bad):
    """Plain Python: eligible rows sorted by (score desc, index asc)."""
    rows = [i for i, s in enumerate(scores) if np.isfinite(s) and not bad[i]]
    return sorted(rows, key=lambda i: (-scores[i], i))[:k]


def test_top_k_by_hand():
    sel = top_k([0.1, 0.9, 0.5, 0.9, -1.0], 3)
    assert sel.indices == [1, 3, 2]
    assert sel.budget == 3 and sel.shortfall == 0 and sel.excluded == []
    assert sel.mask(5).tolist() == [False, True, True, True, False]


def test_ties_break_by_row_index_whatever_the_input_order():
    scores = np.zeros(50)
    assert top_k(scores, 5).indices == [0, 1, 2, 3, 4]
    scores[[40, 7, 23]] = 1.0
    assert top_k(scores, 4).indices == [7, 23, 40, 0]


def test_bad_and_nonfinite_rows_are_never_selected():
    scores = np.array([5.0, np.nan, 4.0, -np.inf, np.inf, 3.0])
    bad = np.array([False, False, True, False, False, False])
    sel = top_k(scores, "100%", bad=bad)
    assert sel.indices == [0, 5]
    assert sel.excluded == [1, 2, 3, 4]
    assert sel.budget == 6 and sel.shortfall == 4


def test_fraction_budget_is_of_the_whole_pool():
    assert top_k(np.arange(10.0), "20%").indices == [9, 8]
    assert top_k(np.arange(10.0), Budget(fraction=0.25)).indices == [9, 8, 7]


@pytest.mark.parametrize(
    ("scores", "budget", "bad", "message"),
    [
        ([], 1, None, "non-empty 1-D"),
        ([[1.0, 2.0]], 1, None, "non-empty 1-D"),
        ([1.0, 2.0], "x", None, "cannot read budget"),
        ([1.0, 2.0], 1, [1, 0], "boolean"),
        ([1.0, 2.0], 1, np.zeros(3, dtype=bool), "shape"),
    ],
)
def test_top_k_bad_input(scores, budget, bad, message):
    with pytest.raises(ValueError, match=message):
        top_k(scores, budget, bad=bad)


def test_selection_validates():
    with pytest.raises(ValueError, match="twice"):
        Selection([1, 1], 2, [])
    with pytest.raises(ValueError, match="exceeds"):
        Selection([1, 2, 3], 2, [])


@given(
    st.lists(st.sampled_from([0.0, 1.0, 2.0, -1.0, float("nan"), float("-inf")]), min_size=1, max_size=40),
    st.integers(min_value=1, max_value=50),
    st.data(),
)
def test_top_k_matches_sorted_reference(scores, k, data):
    bad = np.array(data.draw(st.lists(st.booleans(), min_size=len(scores), max_size=len(scores))))
    sel = top_k(np.array(scores), k, bad=bad)
    assert sel.indices == reference_top_k(scores, min(k, len(scores)), bad)
    assert sel.budget == min(k, len(scores))


def test_per_task_proportional_by_hand():
    #          row: 0    1    2    3    4    5    6    7    8    9
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0]
    groups = ["a", "a", "a", "a", "a", "a", "b", "b", "c", "c"]
    # 5 rows over sizes 6, 2, 2: exact 3, 1, 1.
    sel = top_k_per_task(scores, groups, budget=5)
    assert sel.indices == [0, 1, 2, 6, 8]
    # Plain top-5 would take only task a.
    assert top_k(scores, 5).indices == [0, 1, 2, 3, 4]


def test_per_task_quotas_by_hand():
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0]
    groups = ["a", "a", "a", "a", "a", "a", "b", "b", None, None]
    sel = top_k_per_task(scores, groups, quotas={"b": 2, None: 1, "a": 0})
    assert sel.indices == [6, 7, 8]
    assert sel.budget == 3
    short = top_k_per_task(scores, groups, quotas={"b": 5})
    assert short.indices == [6, 7] and short.shortfall == 3


def test_per_task_excludes_bad_rows_and_uses_eligible_shares():
    scores = np.array([5.0, 4.0, 3.0, 2.0, 1.0, np.nan])
    groups = ["a", "a", "a", "b", "b", "b"]
    bad = np.array([True, False, False, False, False, False])
    # Eligible: a {1, 2}, b {3, 4}; 2 rows split 1 / 1.
    sel = top_k_per_task(scores, groups, budget=2, bad=bad)
    assert sel.indices == [1, 3]
    assert sel.excluded == [0, 5]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one"),
        ({"budget": 2, "quotas": {"a": 1}}, "exactly one"),
        ({"quotas": {"z": 1}}, "no candidate has"),
        ({"quotas": {"a": -1}}, "integers >= 0"),
        ({"quotas": {"a": 1.5}}, "integers >= 0"),
        ({"quotas": {"a": 0}}, "select nothing"),
        ({"budget": 2, "groups": ["a"]}, "1 task labels for 3"),
    ],
)
def test_per_task_bad_input(kwargs, message):
    args = {"scores": [1.0, 2.0, 3.0], "groups": ["a", "b", "a"]}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        top_k_per_task(**args)


def test_proportional_quotas_by_hand():
    assert proportional_quotas(5, [6, 2, 2]) == [3, 1, 1]
    # 4 over [1, 1, 1]: exact 4/3 each would exceed the total size, so the range check fires.
    with pytest.raises(ValueError, match="cannot hand out"):
        proportional_quotas(4, [1, 1, 1])
    # Equal remainders go to the earlier group.
    assert proportional_quotas(1, [1, 1, 1]) == [1, 0, 0]
    assert proportional_quotas(2, [3, 0, 3]) == [1, 0, 1]
    assert proportional_quotas(0, [0, 0]) == [0, 0]


@given(st.lists(st.integers(min_value=0, max_value=30), min_size=1, max_size=8), st.data())
def test_proportional_quotas_properties(sizes, data):
    total = data.draw(st.integers(min_value=0, max_value=sum(sizes)))
    quotas = proportional_quotas(total, sizes)
    assert sum(quotas) == total
    n = sum(sizes)
    for q, size in zip(quotas, sizes, strict=True):
        assert 0 <= q <= size
        if n:
            assert abs(q - total * size / n) < 1
