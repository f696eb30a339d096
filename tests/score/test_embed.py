"""Cosine similarity to the targets on embedding matrices (score/embed.py), against a per-pair loop."""

import numpy as np
import pytest

from gradsift.score.embed import target_similarity


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_nearest_and_mean_similarity_match_a_loop():
    rng = np.random.default_rng(0)
    cands, targets = _unit(rng, 7, 5), _unit(rng, 3, 5)
    sim = target_similarity(cands, targets)
    loop = np.array([[float(np.dot(c, t)) for t in targets] for c in cands])
    np.testing.assert_allclose(sim.best, loop.max(axis=1), rtol=1e-6)
    np.testing.assert_allclose(sim.mean, loop.mean(axis=1), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(sim.score("max"), sim.best.astype(np.float64))
    np.testing.assert_array_equal(sim.score("mean"), sim.mean.astype(np.float64))
    assert sim.score().dtype == np.float64


def test_bad_inputs_are_refused():
    rng = np.random.default_rng(0)
    sim = target_similarity(_unit(rng, 2, 4), _unit(rng, 1, 4))
    with pytest.raises(ValueError, match="embed_reduce must be 'max' or 'mean'"):
        sim.score("median")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one target"):
        target_similarity(_unit(rng, 2, 4), np.zeros((0, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="must share d"):
        target_similarity(_unit(rng, 2, 4), _unit(rng, 1, 3))
