"""Random selection: a seeded uniform score, the baseline every comparison includes."""

from __future__ import annotations

import numpy as np


def random_scores(n: int, seed: int) -> np.ndarray:
    """Uniform scores [N] in [0, 1) from ``numpy.random.default_rng(seed)``; another seed gives another draw."""
    return np.random.default_rng(seed).random(n)
