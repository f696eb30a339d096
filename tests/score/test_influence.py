"""Chunked influence products: against dense numpy, over memmaps, with bad rows and bad inputs."""

from __future__ import annotations

import numpy as np
import pytest

from gradsift.score.influence import (
    TaskGroups,
    influence_matrix,
    influence_matrix_chunks,
    weighted_influence_chunks,
)


def dense(cands, targets, weights, normalize):
    """Reference: the whole weighted matrix in float64, one checkpoint at a time."""
    total = 0.0
    for c, t, w in zip(cands, targets, weights, strict=True):
        c = np.asarray(c, dtype=np.float64)
        t = np.asarray(t, dtype=np.float64)
        if normalize:
            c = c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-300)
            t = t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-300)
        total = total + w * (c @ t.T)
    return total


def collect(chunks):
    starts, blocks = zip(*chunks, strict=True)
    return list(starts), np.concatenate(blocks)


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("chunk_rows", [1, 3, 7, 50, None])
def test_chunks_match_dense(normalize, chunk_rows):
    rng = np.random.default_rng(0)
    cand = rng.standard_normal((23, 6)).astype(np.float32)
    targets = rng.standard_normal((5, 6)).astype(np.float32)
    starts, a = collect(influence_matrix_chunks(cand, targets, normalize, chunk_rows))
    step = chunk_rows or 23
    assert starts == list(range(0, 23, step))
    assert a.dtype == np.float32 and a.shape == (23, 5)
    np.testing.assert_allclose(a, dense([cand], [targets], [1.0], normalize), rtol=1e-5, atol=1e-6)


def test_cosine_known_values():
    cand = np.array([[3.0, 0, 0], [1, 1, 0], [0, 0, 0], [0, -2, 0]])
    targets = np.array([[1.0, 0, 0], [0, 5, 0]])
    _, a = collect(influence_matrix_chunks(cand, targets, normalize=True, chunk_rows=2))
    r = 1 / np.sqrt(2)
    # A zero candidate has cosine 0 with everything, not NaN.
    np.testing.assert_allclose(a, [[1, 0], [r, r], [0, 0], [0, -1]], rtol=1e-6)
    _, raw = collect(influence_matrix_chunks(cand, targets, normalize=False))
    np.testing.assert_array_equal(raw, [[3, 0], [1, 5], [0, 0], [0, -10]])


@pytest.mark.parametrize("chunk_rows", [2, 5, None])
def test_weighted_checkpoints_match_dense(chunk_rows):
    rng = np.random.default_rng(1)
    cands = [rng.standard_normal((11, 4)) for _ in range(3)]
    targets = [rng.standard_normal((6, 4)) for _ in range(3)]
    weights = [3e-5, 2e-5, 1e-5]
    _, a = collect(weighted_influence_chunks(cands, targets, weights, True, chunk_rows))
    np.testing.assert_allclose(a, dense(cands, targets, weights, True), rtol=1e-5, atol=1e-10)
    full = influence_matrix(cands, targets, weights, normalize=True, chunk_rows=chunk_rows)
    np.testing.assert_array_equal(full, a)


def test_float16_memmap_input(tmp_path):
    rng = np.random.default_rng(2)
    values = rng.standard_normal((40, 8)).astype(np.float16)
    mm = np.lib.format.open_memmap(tmp_path / "c.npy", mode="w+", dtype=np.float16, shape=values.shape)
    mm[:] = values
    mm.flush()
    readonly = np.load(tmp_path / "c.npy", mmap_mode="r")
    targets = rng.standard_normal((3, 8)).astype(np.float16)
    _, from_mm = collect(influence_matrix_chunks(readonly, targets, True, chunk_rows=9))
    _, from_f32 = collect(influence_matrix_chunks(values.astype(np.float32), targets, True, chunk_rows=9))
    np.testing.assert_array_equal(from_mm, from_f32)
    np.testing.assert_allclose(from_mm, dense([values], [targets], [1.0], True), rtol=1e-5, atol=1e-6)


def test_float32_input_is_not_modified():
    cand = np.array([[3.0, 4.0], [1.0, 0.0]], dtype=np.float32)
    before = cand.copy()
    list(influence_matrix_chunks(cand, np.eye(2), normalize=True))
    np.testing.assert_array_equal(cand, before)


def test_bad_and_nonfinite_rows_are_nan():
    cand = np.ones((6, 3), dtype=np.float32)
    cand[1, 2] = np.nan
    cand[4, 0] = np.inf
    bad = np.zeros(6, dtype=bool)
    bad[3] = True
    _, a = collect(influence_matrix_chunks(cand, np.eye(3), normalize=False, chunk_rows=4, bad=bad))
    nan_rows = np.isnan(a).all(axis=1)
    assert nan_rows.tolist() == [False, True, False, True, True, False]
    assert np.isfinite(a[~nan_rows]).all()


def test_bad_row_in_one_checkpoint_is_bad_in_the_sum():
    c0 = np.ones((3, 2))
    c1 = np.ones((3, 2))
    c1[2, 0] = np.nan
    _, a = collect(weighted_influence_chunks([c0, c1], [np.eye(2), np.eye(2)], [1.0, 0.0], True))
    assert np.isnan(a[2]).all() and np.isfinite(a[:2]).all()


def test_float16_overflow_row_is_bad():
    cand = np.array([[60000.0, 60000.0], [1.0, 1.0]], dtype=np.float16)
    cand[0, 0] = np.float16(np.inf)
    _, a = collect(influence_matrix_chunks(cand, np.eye(2), normalize=True))
    assert np.isnan(a[0]).all() and np.isfinite(a[1]).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"targets": np.array([[1.0, np.nan]])}, "non-finite"),
        ({"targets": np.ones((2, 3))}, "k=2"),
        ({"cand": np.ones(4)}, "2-D"),
        ({"cand": np.ones((0, 2))}, "empty"),
        ({"chunk_rows": 0}, "chunk_rows"),
        ({"bad": np.array([0, 1, 0])}, "boolean"),
        ({"bad": np.zeros(2, dtype=bool)}, "shape"),
    ],
)
def test_bad_inputs_raise_at_call(kwargs, message):
    args = {"cand": np.ones((3, 2)), "targets": np.eye(2), "normalize": True, "chunk_rows": None, "bad": None}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        influence_matrix_chunks(**args)


@pytest.mark.parametrize(
    ("cands", "targets", "weights", "message"),
    [
        ([np.ones((3, 2))], [np.eye(2), np.eye(2)], None, "checkpoints"),
        ([np.ones((3, 2)), np.ones((4, 2))], [np.eye(2), np.eye(2)], None, "candidate rows"),
        ([np.ones((3, 2)), np.ones((3, 2))], [np.eye(2), np.ones((3, 2))], None, "target rows"),
        ([np.ones((3, 2))], [np.eye(2)], [1.0, 2.0], "one weight per checkpoint"),
        ([np.ones((3, 2))], [np.eye(2)], [-1.0], ">= 0"),
        ([np.ones((3, 2))], [np.eye(2)], [np.nan], "finite"),
        ([np.ones((3, 2))], [np.eye(2)], [0.0], "all zero"),
        ([], [], None, "at least one checkpoint"),
    ],
)
def test_bad_checkpoints_raise(cands, targets, weights, message):
    with pytest.raises(ValueError, match=message):
        weighted_influence_chunks(cands, targets, weights, normalize=True)


def test_influence_matrix_fills_memmap_out(tmp_path):
    rng = np.random.default_rng(3)
    cand = rng.standard_normal((10, 4))
    targets = rng.standard_normal((3, 4))
    out = np.lib.format.open_memmap(tmp_path / "a.npy", mode="w+", dtype=np.float32, shape=(10, 3))
    result = influence_matrix([cand], [targets], None, normalize=True, chunk_rows=3, out=out)
    assert result is out
    np.testing.assert_allclose(out, dense([cand], [targets], [1.0], True), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="out must be float32"):
        influence_matrix([cand], [targets], None, out=np.empty((10, 3)))


def test_task_groups():
    groups = TaskGroups.from_labels(["b", "a", "b", "c"], 4)
    assert groups.names == ["b", "a", "c"]
    assert groups.index.tolist() == [0, 1, 0, 2]
    np.testing.assert_allclose(groups.mean_matrix(), [[0.5, 0, 0], [0, 1, 0], [0.5, 0, 0], [0, 0, 1]])
    single = TaskGroups.from_labels(None, 3)
    assert single.names == ["all"] and single.sizes.tolist() == [3]
    with pytest.raises(ValueError, match="3 target task labels for 4"):
        TaskGroups.from_labels(["a", "b", "c"], 4)
