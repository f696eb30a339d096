"""The paired bootstrap against a loop over replicates with the same draws, and ranks and Spearman's
correlation in numpy against scipy's."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import rankdata, spearmanr

from gradsift.stats import Interval, average_ranks, bootstrap_draws, paired_bootstrap, spearman


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


def slow_paired_bootstrap(a, b, n_boot, seed, level, resample_seeds):
    """One replicate at a time: pick the examples, pick each group's seeds, average, subtract."""
    a = np.atleast_2d(a)
    groups = [a] if b is None else [a, np.atleast_2d(b)]
    rng = np.random.default_rng(seed)
    examples, picks = bootstrap_draws(a.shape[1], [g.shape[0] for g in groups], n_boot, rng)
    reps = []
    for r in range(n_boot):
        total = 0.0
        for sign, g, pick in zip((1.0, -1.0), groups, picks, strict=False):
            rows = pick[r] if resample_seeds else np.arange(g.shape[0])
            for j in examples[r]:
                total += sign * sum(g[s, j] for s in rows) / len(rows)
        reps.append(total / a.shape[1])
    point = float(
        np.mean(
            [sum(s * g[:, j].mean() for s, g in zip((1.0, -1.0), groups, strict=False)) for j in range(a.shape[1])]
        )
    )
    low, high = np.quantile(reps, [(1 - level) / 2, 1 - (1 - level) / 2])
    return point, low, high


@pytest.mark.parametrize("resample_seeds", [True, False])
@pytest.mark.parametrize("shapes", [((3, 17), (3, 17)), ((2, 9), (4, 9)), ((1, 11), None), ((3, 8), None)])
def test_vectorised_replicates_match_the_loop(shapes, resample_seeds):
    rng = np.random.default_rng(5)
    a = rng.normal(size=shapes[0])
    b = None if shapes[1] is None else rng.normal(size=shapes[1]) + 0.3
    got = paired_bootstrap(a, b, n_boot=300, seed=11, level=0.9, resample_seeds=resample_seeds)
    want = slow_paired_bootstrap(a, b, 300, 11, 0.9, resample_seeds)
    assert (got.value, got.low, got.high) == pytest.approx(want, rel=1e-10, abs=1e-12)


def test_a_constant_difference_has_a_zero_width_interval():
    rng = np.random.default_rng(0)
    b = rng.normal(size=(3, 40))
    res = paired_bootstrap(b + 0.25, b, n_boot=500, seed=1, resample_seeds=False)
    assert res == pytest.approx(Interval(0.25, 0.25, 0.25))
    assert res.excludes_zero()


def test_a_bound_that_is_exactly_zero_reads_as_zero_not_as_rounding_residue():
    # a 0/1 metric (refusal) over 3 seeds: every replicate is an integer over 3 * N, so the bounds are exact;
    # in floats the 1/3 seed weights once left the low bound at 5.6e-18 and the verdict at "better"
    rng = np.random.default_rng(1)
    a = (rng.random((3, 20)) < 0.6).astype(float)
    b = (rng.random((3, 20)) < 0.3).astype(float)
    got = paired_bootstrap(a, b, n_boot=200, seed=0)
    examples, picks = bootstrap_draws(20, [3, 3], 200, np.random.default_rng(0))
    ints = [
        g.astype(np.int64)[pick[:, :, None], examples[:, None, :]].sum((1, 2))
        for g, pick in zip((a, b), picks, strict=True)
    ]
    exact = np.quantile(ints[0] - ints[1], [0.025, 0.975]) / (3 * 20)
    assert exact[0] == 0.0 and got.low == 0.0 and got.high == pytest.approx(exact[1], rel=1e-12)
    assert not got.excludes_zero()


def test_pairing_removes_the_shared_example_variation():
    # examples differ a lot, the two groups by a small shift: paired, the shift is found; the unpaired
    # intervals of the two means overlap
    rng = np.random.default_rng(3)
    hard = rng.normal(scale=5.0, size=200)
    a = hard + 0.2 + rng.normal(scale=0.05, size=(3, 200))
    b = hard + rng.normal(scale=0.05, size=(3, 200))
    diff = paired_bootstrap(a, b, seed=2)
    assert diff.low > 0.1 and diff.high < 0.3
    ma, mb = paired_bootstrap(a, seed=2), paired_bootstrap(b, seed=2)
    assert ma.low < mb.high


def test_seed_variation_widens_the_interval():
    # the same per-example values up to a per-seed offset: resampling seeds lets the offsets count
    rng = np.random.default_rng(4)
    base = rng.normal(size=100)
    a = base + np.array([[-0.5], [0.0], [0.5]])
    b = np.tile(base, (3, 1))
    wide = paired_bootstrap(a, b, seed=0)
    narrow = paired_bootstrap(a, b, seed=0, resample_seeds=False)
    assert narrow.high - narrow.low == pytest.approx(0.0, abs=1e-12)
    assert wide.high - wide.low > 0.3 and wide.low < 0 < wide.high


def test_the_same_seed_gives_the_same_interval_and_the_point_is_the_plain_mean():
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=(3, 30)), rng.normal(size=(2, 30))
    assert paired_bootstrap(a, b, seed=9) == paired_bootstrap(a, b, seed=9)
    assert paired_bootstrap(a, b, seed=9).value == pytest.approx(a.mean() - b.mean())


@pytest.mark.parametrize(
    "a, b, kw, match",
    [
        (np.ones((2, 3)), np.ones((2, 4)), {}, "same examples"),
        (np.ones((2, 0)), None, {}, "same examples"),
        (np.array([[1.0, np.nan]]), None, {}, "finite"),
        (np.ones((1, 3)), None, {"level": 1.0}, "level"),
        (np.ones((1, 3)), None, {"n_boot": 0}, "n_boot"),
    ],
)
def test_bad_input_is_refused(a, b, kw, match):
    with pytest.raises(ValueError, match=match):
        paired_bootstrap(a, b, **kw)
