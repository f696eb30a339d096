"""Budget parsing and resolution."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gradsift.selection.budget import Budget


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("50", Budget(count=50)),
        (" 7 ", Budget(count=7)),
        (50, Budget(count=50)),
        (np.int64(3), Budget(count=3)),
        ("0.05", Budget(fraction=0.05)),
        (".5", Budget(fraction=0.5)),
        ("1.0", Budget(fraction=1.0)),
        ("5e-2", Budget(fraction=0.05)),
        (0.25, Budget(fraction=0.25)),
        ("5%", Budget(fraction=0.05)),
        ("12.5 %", Budget(fraction=0.125)),
        ("100%", Budget(fraction=1.0)),
    ],
)
def test_parse(text, expected):
    assert Budget.parse(text) == expected
    assert Budget.parse(expected) is expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "cannot read budget"),
        ("abc", "cannot read budget"),
        ("5 examples", "cannot read budget"),
        ("1/3", "cannot read budget"),
        ("-5", "must be positive"),
        ("-0.1", "must be positive"),
        ("0", "count must be >= 1"),
        ("0.0", r"fraction must be in \(0, 1\]"),
        ("50.0", "write an integer such as 50"),
        ("1e3", r"fraction must be in \(0, 1\]"),
        ("0%", r"percentage must be in \(0, 100\]"),
        ("150%", r"percentage must be in \(0, 100\]"),
        ("x%", "as a percentage"),
        ("nan", "cannot read budget"),
        (float("nan"), r"fraction must be in \(0, 1\]"),
        (True, "count, fraction or percentage"),
        (None, "string or number"),
    ],
)
def test_parse_errors(text, message):
    with pytest.raises(ValueError, match=message):
        Budget.parse(text)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one"),
        ({"count": 3, "fraction": 0.5}, "exactly one"),
        ({"count": 2.5}, "integer"),
        ({"count": -1}, ">= 1"),
        ({"fraction": 1.5}, r"\(0, 1\]"),
        ({"fraction": "0.5"}, "number"),
    ],
)
def test_constructor_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Budget(**kwargs)


@pytest.mark.parametrize(
    ("budget", "n", "expected"),
    [
        ("50", 1000, 50),
        ("50", 20, 20),
        ("5%", 1000, 50),
        ("5%", 50, 3),  # 2.5 rounds half up
        ("0.15", 10, 2),  # decimal 0.15, not the binary value just below it
        ("0.1", 25, 3),
        ("0.1", 24, 2),
        ("1%", 10, 1),  # at least 1
        ("1.0", 7, 7),
    ],
)
def test_resolve(budget, n, expected):
    assert Budget.parse(budget).resolve(n) == expected


@pytest.mark.parametrize("n", [0, -3, 2.5, True])
def test_resolve_rejects_bad_pool_sizes(n):
    with pytest.raises(ValueError, match="cannot select from a pool"):
        Budget(count=1).resolve(n)


budgets = st.one_of(
    st.integers(min_value=1, max_value=10**9).map(lambda c: Budget(count=c)),
    st.floats(min_value=1e-9, max_value=1.0).map(lambda f: Budget(fraction=f)),
)


@given(budgets)
def test_str_round_trips(budget):
    assert Budget.parse(str(budget)) == budget


@given(budgets, st.integers(min_value=1, max_value=10**7))
def test_resolve_is_in_range_and_near_exact(budget, n):
    k = budget.resolve(n)
    assert 1 <= k <= n
    if budget.fraction is not None:
        exact = budget.fraction * n
        assert abs(k - exact) <= 0.5 + 1e-9 * n if exact >= 0.5 else k == 1
    else:
        assert k == min(budget.count, n)


@given(st.integers(min_value=1, max_value=100), st.integers(min_value=1, max_value=10**6))
def test_percentages_resolve_like_integer_arithmetic(percent, n):
    # round-half-up of n * percent / 100, in exact integer arithmetic
    expected = max(1, (2 * n * percent + 100) // 200)
    assert Budget.parse(f"{percent}%").resolve(n) == min(n, expected)
