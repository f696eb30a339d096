"""BIDS: incremental selection against a naive re-computation, z-scores, baselines and coverage."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import gradsift.selection.bids as bids_module
from gradsift.score.influence import influence_matrix
from gradsift.selection.bids import aggregate_select, bids_select, column_tops, coverage, usable_rows, zscore_columns


def naive_bids(z: np.ndarray, budget: int, usable: np.ndarray) -> list[int]:
    """Reference: recompute the selected rows' column means from scratch at every step, one candidate at a time."""
    chosen: list[int] = []
    while len(chosen) < min(budget, int(usable.sum())):
        if chosen:
            total = np.zeros(z.shape[1])
            for k in chosen:
                total = total + z[k].astype(np.float64)
            mean = total / len(chosen)
        else:
            mean = np.zeros(z.shape[1])
        best, best_gain = None, None
        for i in range(z.shape[0]):
            if i in chosen or not usable[i]:
                continue
            gain = float(np.max(z[i].astype(np.float64) - mean))
            if best_gain is None or gain > best_gain:
                best, best_gain = i, gain
        chosen.append(best)
    return chosen


def test_bids_by_hand():
    # Two targets; rows 0 and 1 both serve target 0, row 2 serves target 1 less strongly.
    a = np.array([[10.0, 0.0], [9.0, 0.0], [0.0, 5.0], [1.0, 1.0]])
    # Step 1: max_j A_ij = 10, 9, 5, 1 -> row 0. Mean = [10, 0].
    # Step 2: gains max(A_i - [10, 0]) = row1 max(-1, 0) = 0, row2 max(-10, 5) = 5, row3 max(-9, 1) = 1 -> row 2.
    # Step 3: mean [5, 2.5]; row1 max(4, -2.5) = 4, row3 max(-4, -1.5) = -1.5 -> row 1.
    assert bids_select(a, 3, normalize=False).indices == [0, 2, 1]
    # Top-k by instance-max would take rows 0 and 1 for target 0 first.
    assert aggregate_select(a, None, 2, "instance-max").indices == [0, 1]


def test_zscore_by_hand():
    a = np.array([[1.0, 5.0, 2.0], [3.0, 5.0, 4.0], [np.nan, 0.0, 0.0], [5.0, 5.0, 6.0]])
    z = zscore_columns(a)
    # Row 2 is unusable (NaN): stats over rows 0, 1, 3. Column 0: mean 3, std sqrt(8/3).
    s = np.sqrt(8 / 3)
    np.testing.assert_allclose(z[[0, 1, 3], 0], [-2 / s, 0, 2 / s], rtol=1e-6)
    np.testing.assert_array_equal(z[[0, 1, 3], 1], [0, 0, 0])  # constant column
    assert np.isnan(z[2]).all()
    bad = np.array([False, False, False, True])
    assert usable_rows(a, bad).tolist() == [True, True, False, False]


def test_zscore_matches_numpy_on_memmap(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((30, 5)) * [1, 10, 100, 1e3, 1e4] + [0, 5, 50, 500, 1e6]
    mm = np.lib.format.open_memmap(tmp_path / "a.npy", mode="w+", dtype=np.float32, shape=a.shape)
    mm[:] = a
    z = zscore_columns(np.load(tmp_path / "a.npy", mmap_mode="r"), chunk_rows=7)
    ref = (mm - mm.astype(np.float64).mean(0)) / mm.astype(np.float64).std(0)
    np.testing.assert_allclose(z, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk_rows", [1, 4, None])
def test_incremental_matches_naive_on_random_matrices(chunk_rows):
    rng = np.random.default_rng(1)
    for trial in range(5):
        a = rng.standard_normal((25, 6)) * rng.uniform(0.1, 10, size=6)
        budget = 12
        z = zscore_columns(a)
        expected = naive_bids(z, budget, np.ones(25, dtype=bool))
        assert bids_select(a, budget, chunk_rows=chunk_rows).indices == expected, trial


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(
        np.float64, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=9), elements=st.integers(-3, 3)
    ),
    st.integers(min_value=1, max_value=12),
    st.integers(min_value=1, max_value=4),
    st.data(),
)
def test_incremental_matches_naive_with_ties(a, budget, chunk_rows, data):
    # Small integers: sums are exact in any order and ties are frequent, so the lowest-index rule is exercised.
    bad = np.array(data.draw(st.lists(st.booleans(), min_size=a.shape[0], max_size=a.shape[0])))
    usable = ~bad
    sel = bids_select(a, budget, bad=bad, normalize=False, chunk_rows=chunk_rows)
    assert sel.indices == naive_bids(a, min(budget, a.shape[0]), usable)
    assert sel.excluded == np.flatnonzero(bad).tolist()
    assert not set(sel.indices) & set(sel.excluded)


def test_bad_rows_are_excluded_from_stats_and_selection():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((10, 3))
    a[4, 1] = np.inf
    bad = np.zeros(10, dtype=bool)
    bad[7] = True
    sel = bids_select(a, "100%", bad=bad)
    assert sel.excluded == [4, 7] and sorted(sel.indices) == [0, 1, 2, 3, 5, 6, 8, 9] and sel.shortfall == 2
    keep = [0, 1, 2, 3, 5, 6, 8, 9]
    z = zscore_columns(a[keep])
    assert [keep[i] for i in naive_bids(z, 5, np.ones(8, dtype=bool))] == bids_select(a, 5, bad=bad).indices


def test_first_pick_is_the_largest_z_score():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((40, 7))
    z = zscore_columns(a)
    first = bids_select(a, 1).indices[0]
    assert first == int(np.argmax(z.max(axis=1)))


def test_bids_from_features():
    rng = np.random.default_rng(4)
    cands = [rng.standard_normal((30, 8)) for _ in range(2)]
    targets = [rng.standard_normal((6, 8)) for _ in range(2)]
    a = influence_matrix(cands, targets, [2e-5, 1e-5], normalize=True, chunk_rows=7)
    unit = [c / np.linalg.norm(c, axis=1, keepdims=True) for c in cands]
    unit_t = [t / np.linalg.norm(t, axis=1, keepdims=True) for t in targets]
    np.testing.assert_allclose(a, 2e-5 * unit[0] @ unit_t[0].T + 1e-5 * unit[1] @ unit_t[1].T, rtol=1e-5, atol=1e-11)
    assert bids_select(a, 10).indices == naive_bids(zscore_columns(a), 10, np.ones(30, dtype=bool))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: bids_select(np.ones(4), 2), "2-D"),
        (lambda: bids_select(np.ones((0, 3)), 2), "non-empty"),
        (lambda: bids_select(np.ones((3, 2)), "zero"), "cannot read budget"),
        (lambda: bids_select(np.ones((3, 2)), 1, bad=[0, 1, 0]), "boolean"),
        (lambda: bids_select(np.ones((3, 2)), 1, chunk_rows=0), "chunk_rows"),
        (lambda: bids_select(np.full((3, 2), np.nan), 1), "no usable"),
        (lambda: aggregate_select(np.ones((3, 2)), None, 1, "median"), "'median'"),
        (lambda: aggregate_select(np.ones((3, 2)), ["a"], 1, "sum"), "1 target task labels for 2"),
    ],
)
def test_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_aggregate_baselines_by_hand():
    # Targets t0, t1 in task "a", t2 in task "b".
    a = np.array(
        [
            [4.0, 0.0, 0.0],  # task means a=2, b=0; instance-max 4; sum 4
            [1.0, 1.0, 1.0],  # a=1, b=1; max 1; sum 3
            [0.0, 0.0, 3.0],  # a=0, b=3; max 3; sum 3
            [2.0, 2.0, 0.0],  # a=2, b=0; max 2; sum 4
        ]
    )
    tasks = ["a", "a", "b"]
    assert aggregate_select(a, tasks, 2, "task-max").indices == [2, 0]
    assert aggregate_select(a, tasks, 2, "instance-max").indices == [0, 2]
    assert aggregate_select(a, tasks, 2, "sum").indices == [0, 3]
    bad = np.array([True, False, False, False])
    assert aggregate_select(a, tasks, 2, "sum", bad=bad).indices == [3, 1]


def test_coverage_by_hand():
    a = np.array(
        [
            [4.0, 0.0, 0.0],
            [1.0, 1.0, 1.0],
            [0.0, 0.0, 3.0],
            [2.0, 2.0, np.nan],
        ]
    )
    tasks = ["a", "a", "b"]
    # Row 3 is unusable, so the pool best per target is [4, 1, 3].
    # Selection {0, 1}: best selected per target [4, 1, 1] -> a: mean 2.5, covered 2/2; b: mean 1, covered 0.
    cov = coverage(a, tasks, [1, 0])
    assert [(c.task, c.n_targets) for c in cov] == [("a", 2), ("b", 1)]
    assert [c.best_influence for c in cov] == [2.5, 1.0]
    assert [c.covered for c in cov] == [1.0, 0.0]
    # mean over selected rows per target: [2.5, 0.5, 0.5] -> a: 1.5, b: 0.5; each target's top-2 usable rows:
    # t0 {0, 1}, t1 {1, then 0 or 2 tied at 0} (the tie counts both: 2 of 2), t2 {2, 1} -> recall [1, 1, 0.5]
    assert [c.mean_influence for c in cov] == [1.5, 0.5]
    assert [c.top_recall for c in cov] == [1.0, 0.5]
    cov = coverage(a, tasks, [2])
    assert [c.best_influence for c in cov] == [0.0, 3.0]
    assert [c.covered for c in cov] == [0.0, 1.0]
    assert [c.top_recall for c in cov] == [0.0, 1.0]
    with pytest.raises(ValueError, match="empty selection"):
        coverage(a, tasks, [])
    with pytest.raises(ValueError, match="non-finite"):
        coverage(a, tasks, [3])
    with pytest.raises(ValueError, match="must lie in"):
        coverage(a, tasks, [4])


def test_bids_balances_tasks_where_task_max_does_not():
    # Task "big" has large raw influences on many rows; task "small" has a few modest ones. LESS task-max
    # picks only "big" rows; BIDS' z-scoring and max-gain rule covers both.
    rng = np.random.default_rng(5)
    n = 60
    a = np.zeros((n, 4))
    a[:, :2] = rng.uniform(0.5, 1.0, size=(n, 2))
    a[:, 2:] = rng.uniform(-0.1, 0.0, size=(n, 2))
    a[50:, :2] = rng.uniform(0.5, 0.6, size=(10, 2))
    a[50:, 2:] += 0.2
    tasks = ["big", "big", "small", "small"]
    less = aggregate_select(a, tasks, 6, "task-max")
    bids = bids_select(a, 6)
    assert not set(less.indices) & set(range(50, 60))
    assert set(bids.indices) & set(range(50, 60))
    z = zscore_columns(a)
    assert coverage(z, tasks, bids.indices)[1].covered > coverage(z, tasks, less.indices)[1].covered
    assert coverage(z, tasks, bids.indices)[1].top_recall > coverage(z, tasks, less.indices)[1].top_recall


def test_coverage_recall_matches_a_sort_per_column_in_any_chunking():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(40, 5))
    bad = np.zeros(40, dtype=bool)
    bad[[3, 17]] = True
    sel = [0, 5, 9, 22, 30, 31]
    ok = np.flatnonzero(~bad)
    want = []
    for j in range(5):
        top = set(ok[np.argsort(-a[ok, j])][: len(sel)].tolist())
        want.append(len(top & set(sel)) / len(sel))
    for rows in (None, 1, 4, 7):
        cov = coverage(a, None, sel, bad=bad, chunk_rows=rows)
        assert cov[0].top_recall == pytest.approx(np.mean(want))
        assert cov[0].mean_influence == pytest.approx(a[sel].mean(axis=0).mean())


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(
        np.float64, st.tuples(st.integers(1, 40), st.integers(1, 5)), elements=st.sampled_from([-1.0, 0.0, 0.5, 2.0])
    ),
    st.integers(1, 45),
    st.integers(1, 13),
)
def test_column_tops_equal_a_full_sort_with_ties(a, k, block):
    vals, rows = column_tops(((s, a[s : s + block]) for s in range(0, len(a), block)), a.shape[1], k)
    for j in range(a.shape[1]):
        want = sorted(range(len(a)), key=lambda i: (-a[i, j], i))[:k]
        assert rows[:, j].tolist() == want
        assert vals[:, j].tolist() == a[want, j].tolist()


@pytest.mark.parametrize("group_bytes", [None, 16 * 40 * 5])
def test_streamed_bids_equals_the_rescan_on_a_larger_memmap(tmp_path, monkeypatch, group_bytes):
    if group_bytes:  # column groups of 5: several passes, one per group
        monkeypatch.setattr(bids_module, "CHUNK_BYTES", group_bytes)
    rng = np.random.default_rng(3)
    a = np.lib.format.open_memmap(tmp_path / "a.npy", mode="w+", dtype=np.float32, shape=(600, 12))
    a[:] = rng.normal(size=(600, 12)) * np.linspace(0.1, 5, 12) + np.linspace(-3, 3, 12)
    bad = rng.random(600) < 0.05
    z = zscore_columns(a, bad)
    assert bids_select(a, 40, bad=bad, chunk_rows=64).indices == naive_bids(z, 40, ~bad)
