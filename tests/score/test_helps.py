"""The targets each candidate helps most (LESS, PRISM, BIDS's matrix), streamed over row blocks, against a
brute-force argmax over the full influence matrix; PRISM's per-target terms against their definition."""

from __future__ import annotations

import numpy as np
import pytest

from gradsift.score.influence import influence_matrix, top_columns, top_targets
from gradsift.score.less import less_scores
from gradsift.score.prism import preference_weights, prism_scores


def brute_force_top(a: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Repeated argmax over each full row, ties to the lowest column; -1/NaN where a row runs out of finite
    entries."""
    n, m = a.shape
    index = np.full((n, k), -1)
    value = np.full((n, k), np.nan)
    for i in range(n):
        row = [(float(a[i, j]), j) for j in range(m) if np.isfinite(a[i, j])]
        # largest value first, then the lowest column
        row.sort(key=lambda t: (-t[0], t[1]))
        for r, (v, j) in enumerate(row[:k]):
            index[i, r], value[i, r] = j, v
    return index, value


def test_top_columns_breaks_ties_by_lowest_column_and_skips_non_finite():
    block = np.array(
        [
            [1.0, 3.0, 3.0, 2.0],
            [np.nan, np.nan, np.nan, np.nan],
            [-np.inf, 5.0, np.nan, -1.0],
            [0.0, 0.0, 0.0, 0.0],
        ]
    )
    index, value = top_columns(block, 3)
    np.testing.assert_array_equal(index, [[1, 2, 3], [-1, -1, -1], [1, 3, -1], [0, 1, 2]])
    np.testing.assert_array_equal(value, [[3, 3, 2], [np.nan] * 3, [5, -1, np.nan], [0, 0, 0]])


def test_top_columns_with_fewer_targets_than_k():
    index, value = top_columns(np.array([[0.5, 2.0]]), 3)
    np.testing.assert_array_equal(index, [[1, 0, -1]])
    np.testing.assert_array_equal(value, [[2.0, 0.5, np.nan]])


@pytest.mark.parametrize("chunk_rows", [1, 7, None])
def test_top_targets_streamed_equals_brute_force_with_ties(chunk_rows):
    rng = np.random.default_rng(0)
    # rounded values: many ties within a row
    a = np.round(rng.normal(size=(40, 9)), 1).astype(np.float32)
    a[5] = np.nan
    got = top_targets(a, 3, chunk_rows)
    index, value = brute_force_top(a, 3)
    np.testing.assert_array_equal(got.index, index)
    np.testing.assert_array_equal(got.value, value)


def test_top_bad_input():
    with pytest.raises(ValueError, match="k must be"):
        top_columns(np.ones((2, 2)), 0)
    with pytest.raises(ValueError, match="chunk_rows"):
        top_targets(np.ones((2, 2)), 1, chunk_rows=0)
    with pytest.raises(ValueError, match="2-D"):
        top_targets(np.ones(3), 1)


def _features(seed: int, n: int = 50, m: int = 11, k: int = 16, checkpoints: int = 2):
    rng = np.random.default_rng(seed)
    cands = [rng.normal(size=(n, k)).astype(np.float16) for _ in range(checkpoints)]
    targets = [rng.normal(size=(m, k)).astype(np.float32) for _ in range(checkpoints)]
    return cands, targets


@pytest.mark.parametrize("chunk_rows", [3, None])
def test_less_helps_equal_the_argmax_of_the_full_influence_matrix(chunk_rows):
    cands, targets = _features(1)
    bad = np.zeros(50, dtype=bool)
    bad[7] = True
    weights = [1e-4, 5e-5]
    tasks = ["a"] * 5 + ["b"] * 6
    out = less_scores(cands, targets, tasks, weights, bad=bad, chunk_rows=chunk_rows, helps=3)
    full = influence_matrix(cands, targets, weights, normalize=True, bad=bad)
    index, value = brute_force_top(full, 3)
    assert out.helps is not None
    np.testing.assert_array_equal(out.helps.index, index)
    np.testing.assert_allclose(out.helps.value, value, rtol=1e-6)
    assert (out.helps.index[7] == -1).all()
    # the scores are those computed without helps
    plain = less_scores(cands, targets, tasks, weights, bad=bad, chunk_rows=chunk_rows)
    np.testing.assert_array_equal(out.scores, plain.scores)
    assert plain.helps is None


def _prism_terms(cands, gp, gm, lp, lm, weights, cosine):
    """t_q(z) of every candidate and target [N, M] in float64, from the definition (prism.py docstring)."""
    n, m = cands[0].shape[0], gp[0].shape[0]
    terms = np.zeros((n, m))
    for c, w in enumerate(weights):
        pi = preference_weights(lp[c], lm[c])
        d = np.asarray(gp[c], np.float64) - np.asarray(gm[c], np.float64)
        g = np.asarray(cands[c], np.float64)
        t = (g @ d.T) * pi / m
        if cosine:
            direction = (pi @ d) / m
            t /= np.linalg.norm(g, axis=1, keepdims=True) * np.linalg.norm(direction)
        terms += w * t
    return terms


@pytest.mark.parametrize("scoring", ["raw", "cosine"])
@pytest.mark.parametrize("chunk_rows", [4, None])
def test_prism_terms_sum_to_the_score_and_helps_are_their_argmax(scoring, chunk_rows):
    cands, gp = _features(2, n=30, m=6, k=12)
    _, gm = _features(3, n=30, m=6, k=12)
    rng = np.random.default_rng(4)
    lp, lm = rng.uniform(0.5, 3, size=(2, 6)), rng.uniform(0.5, 3, size=(2, 6))
    weights = [2.0, 1.0]
    out = prism_scores(cands, gp, gm, lp, lm, weights, scoring=scoring, chunk_rows=chunk_rows, helps=3)
    terms = _prism_terms(cands, gp, gm, lp, lm, weights, scoring == "cosine")
    np.testing.assert_allclose(terms.sum(axis=1), out.scores, rtol=1e-4, atol=1e-5)
    index, value = brute_force_top(terms, 3)
    assert out.helps is not None
    np.testing.assert_array_equal(out.helps.index, index)
    np.testing.assert_allclose(out.helps.value, value, rtol=1e-4, atol=1e-6)
    # the same scores as without helps, up to float32 rounding (one matrix product with more columns)
    plain = prism_scores(cands, gp, gm, lp, lm, weights, scoring=scoring, chunk_rows=chunk_rows)
    np.testing.assert_allclose(out.scores, plain.scores, rtol=1e-6, atol=1e-6 * np.abs(plain.scores).max())


def test_helps_must_not_be_negative():
    cands, targets = _features(5)
    with pytest.raises(ValueError, match="helps"):
        less_scores(cands, targets, None, helps=-1)
